"""Model cards rendered as sanitised Markdown (issue 17: the card showed as raw markdown)."""

from __future__ import annotations

from hub.web.markdown import render


def test_the_compilers_card_renders_headings_lists_tables_and_code():
    html = render(
        "# Model card: digits 1.0\n\n- Task: classification (10 classes)\n- Input: `[1, 8, 8, 1] int8`\n\n"
        "## Quality\n\n| artifact | top-1 |\n|---|---|\n| int8 | 97.2% |\n\nLatency is **median**.\n"
    )
    assert "<h3>Model card: digits 1.0</h3>" in html and "<h4>Quality</h4>" in html  # below the page's h1/h2
    assert "<ul><li>Task: classification (10 classes)</li><li>Input: <code>[1, 8, 8, 1] int8</code></li></ul>" in html
    assert '<th scope="col">artifact</th>' in html and "<td>97.2%</td>" in html
    assert "<p>Latency is <strong>median</strong>.</p>" in html


def test_a_hostile_card_cannot_inject_markup_script_or_javascript_links():
    html = render(
        "# <script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n[click](javascript:alert(1)) "
        "[ok](https://example.org/x)\n\n| <b>x</b> |\n|---|\n| <i>y</i> |\n\n```\n<script>\n```\n"
    )
    assert "<script>" not in html and "<img" not in html and "<b>" not in html and "<i>" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert 'href="javascript' not in html and "[click](javascript:alert(1))" in html  # kept as text
    assert '<a href="https://example.org/x" rel="nofollow noopener">ok</a>' in html


def test_the_model_page_shows_the_bundles_card_rendered(client, bundle_dir):
    from ..test_api import push

    digest = push(client, bundle_dir())["digest"]
    page = client.get(f"/ui/models/{digest}").text
    assert '<div class="card-text markdown" id="model-card"><h3>digits</h3></div>' in page  # the card is "# digits"
    assert "# digits" not in page  # not the raw markdown
