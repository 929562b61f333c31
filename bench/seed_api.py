# The seed's naive endpoint (第 7 章 7.5, "FastAPI 推論端點", api.py), reproduced exactly as written
# for the `python -m bench fallback` baseline. The one change: the model path comes from the
# SEED_MODEL environment variable instead of the hard-coded "/app/model.onnx".
# Run: SEED_MODEL=model.onnx uvicorn bench.seed_api:app --port 8000
# (Not a benchmark module: importing it opens the model.)
import os
# api.py
from fastapi import FastAPI, File, UploadFile
import onnxruntime as ort
import numpy as np
from PIL import Image
app = FastAPI()
session = ort.InferenceSession(os.environ.get("SEED_MODEL", "/app/model.onnx"))
input_name = session.get_inputs()[0].name
@app.post("/predict")
async def predict(file: UploadFile = File(...)):
    image = Image.open(file.file).convert("RGB")
    image = image.resize((224,224))
    arr = np.array(image).transpose(2,0,1).astype(np.float32) / 255.0
    arr = np.expand_dims(arr, 0)
    logits = session.run(None, {input_name: arr})[0]
    return {"predictions": logits.tolist()}
