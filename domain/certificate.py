"""The certificate of recycling rendered for people; its content hash lets a copy be checked."""

import hashlib
import json
from html import escape


def canonical_json(content: dict) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"))


def content_hash(content: dict) -> str:
    """SHA-256 of the canonical JSON: recompute it from the JSON to verify any copy."""
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def render_html(content: dict, digest: str) -> str:
    rows = "\n".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            escape(item["serial_number"]),
            escape(item["product_id"]),
            escape(item["condition"]),
            escape(item["disposition"]),
            escape(f"{item['sanitization']['method']} ({item['sanitization']['standard']})") if item.get("sanitization") else "not data-bearing",
        )
        for item in content["items"]
    )
    d = content["dispositions"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Certificate of recycling {escape(content['deal_id'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.2em .5em}}code{{word-break:break-all}}</style>
</head><body>
<h1>Certificate of recycling</h1>
<p>Takeback deal <strong>{escape(content['deal_id'])}</strong> of partner <strong>{escape(content['partner_id'])}</strong>,
booked {escape(content['booked_at'])}, return window ended or closed by {escape(content['return_deadline'])} (final status: {escape(content['status'])}).</p>
<p>{content['units_received']} units received: {d['refresh']} refurbished (Refresh), {d['recycle']} recycled, {d['other']} other.
Data-bearing items were sanitized under NIST SP 800-88.</p>
<table><thead><tr><th>Serial</th><th>Product</th><th>Condition</th><th>Disposition</th><th>Sanitization</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<p>Content hash (SHA-256 of the certificate JSON, keys sorted, no spaces): <code>{digest}</code></p>
</body></html>
"""
