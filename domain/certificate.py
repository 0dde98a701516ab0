"""The certificate of recycling: its canonical JSON (what its SHA-256 is of), its id, and its renderings
for people (HTML, PDF) with the id, the hash and the URL that verifies them.

A certificate of 100,000 serials is tens of MB of JSON. It is written and read piece by piece: built
as a stream of canonical JSON (`stream_canonical`), stored whole, and read back in windows
(`CertificateText`), one item at a time, so rendering it holds one window and one page in memory.
"""

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from html import escape

STANDARD = "NIST SP 800-88 Rev. 1"
HASH_ALGORITHM = "sha256 of the canonical JSON of `certificate` (keys sorted, no spaces, ASCII)"


def canonical_json(content: dict) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"))


def content_hash(content: dict) -> str:
    """SHA-256 of the canonical JSON: recompute it from the JSON to verify any copy."""
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def certificate_id(deal_id: str, digest: str) -> str:
    """A certificate's id: fixed by its deal and its content, so the same document always has the same
    id, and nobody can guess one without the document (80 bits of its hash)."""
    return "TBC-" + hashlib.sha256(f"takeback-certificate:{deal_id}:{digest}".encode()).hexdigest()[:20].upper()


# --- writing: canonical JSON as a stream --------------------------------------------------------


class Streamed:
    """A list written item by item (an iterable of dicts), in place of a list in `stream_canonical`."""

    def __init__(self, items: Iterable):
        self.items = items


class Later:
    """A value known only once the items before it were written (summaries): computed when reached."""

    def __init__(self, compute: Callable[[], object]):
        self.compute = compute


def _dumps(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def stream_canonical(fields: dict) -> Iterator[str]:
    """The canonical JSON of `fields` in pieces, equal to `canonical_json` of the same dict with every
    `Streamed` replaced by its list and every `Later` by its value."""
    yield "{"
    for n, key in enumerate(sorted(fields)):
        value = fields[key]
        yield ("," if n else "") + _dumps(key) + ":"
        if isinstance(value, Streamed):
            yield "["
            first = True
            for item in value.items:
                yield ("" if first else ",") + _dumps(item)
                first = False
            yield "]"
        else:
            yield _dumps(value.compute() if isinstance(value, Later) else value)
    yield "}"


# --- reading: the stored JSON in windows ------------------------------------------------------

ITEMS_OPEN = '"items":['
ITEMS_CLOSE = '],"partner_id":'  # the key after `items` in every certificate's sorted keys
WINDOW = 1 << 20  # characters read at a time


class CertificateText:
    """The stored canonical JSON of a certificate, read through `read(start, size)` (0-based, in
    characters; the JSON is ASCII) without holding it whole: its header and trailer (every key but
    `items`) as a dict, and its items one by one."""

    def __init__(self, length: int, read: Callable[[int, int], str], window: int = WINDOW):
        self.length, self.read, self.window = length, read, window
        self._fields: dict | None = None
        self._items_start = self._items_end = 0
        self._whole: list | None = None  # the items of a JSON that is not canonical (written by hand): parsed whole

    @classmethod
    def of(cls, text: str, window: int = WINDOW) -> "CertificateText":
        return cls(len(text), lambda start, size: text[start : start + size], window)

    def _locate(self) -> None:
        head = ""
        while ITEMS_OPEN not in head and len(head) < self.length:
            head += self.read(len(head), self.window)
        if ITEMS_OPEN in head:
            tail, start = "", self.length
            while ITEMS_CLOSE not in tail and start > 0:
                start = max(0, start - self.window)
                tail = self.read(start, self.length - start)
            if ITEMS_CLOSE in tail:
                at = head.index(ITEMS_OPEN)
                end = start + tail.rindex(ITEMS_CLOSE)
                self._items_start, self._items_end = at + len(ITEMS_OPEN), end
                self._fields = json.loads(head[:at].rstrip(",") + "}") if at > 1 else {}
                self._fields.update(json.loads("{" + tail[end - start + 2 :]))
                return
        # Not the canonical form (a JSON written otherwise, by hand or by a test): small, read whole.
        whole = json.loads(self.read(0, self.length))
        self._whole = whole.pop("items", [])
        self._fields = whole

    @property
    def fields(self) -> dict:
        """Every key of the certificate but `items`."""
        if self._fields is None:
            self._locate()
        return self._fields

    def items(self) -> Iterator[dict]:
        if self._fields is None:
            self._locate()
        if self._whole is not None:
            yield from self._whole
            return
        decoder = json.JSONDecoder()
        position, end = self._items_start, self._items_end
        buffer, offset = "", position  # buffer holds text from `offset`
        while position < end:
            relative = position - offset
            if buffer.startswith(",", relative):
                relative += 1
                position += 1
            try:
                item, stop = decoder.raw_decode(buffer, relative)
            except json.JSONDecodeError:
                if offset + len(buffer) >= end:
                    raise
                buffer = buffer[relative:] + self.read(offset + len(buffer), self.window)
                offset = position
                continue
            yield item
            position = offset + stop
            if stop > self.window:  # drop what was read
                buffer, offset = buffer[stop:], position

    def chunks(self) -> Iterator[str]:
        """The whole JSON, a window at a time."""
        for start in range(0, self.length, self.window):
            yield self.read(start, self.window)


# --- rendering -------------------------------------------------------------------------------

CUSTODY_LABELS = {
    "committed": "committed",
    "received": "received",
    "rejected": "rejected",
    "graded": "graded",
    "sanitized": "sanitized",
    "dispositioned": "dispositioned",
    "shipped_downstream": "shipped downstream",
    "resold": "resold",
}


def _day(at: str | None) -> str:
    return at[:10] if at else ""


def custody_line(item: dict) -> str:
    """A serial's custody on one line: each step, its day and who did it."""
    steps = []
    for event in item.get("custody", []):
        label = CUSTODY_LABELS.get(event["kind"], event["kind"])
        value = f" {event['value']}" if event.get("value") and event["kind"] not in ("committed", "received") else ""
        steps.append(f"{label}{value} {_day(event['at'])} by {event['actor']}")
    if item.get("pickup_id"):
        steps.insert(1 if steps and item["custody"][0]["kind"] == "committed" else 0, f"picked up in {item['pickup_id']} ({item.get('tracking_number') or ''})")
    return " > ".join(steps)


def sanitization_line(item: dict) -> str:
    record = item.get("sanitization_record")
    status = item.get("sanitization_status", "")
    if "sanitization_status" not in item:  # a certificate issued before sanitization records: its method line
        return f"{item['sanitization']['method']} ({item['sanitization']['standard']})" if item.get("sanitization") else "not data-bearing"
    if record:
        return (f"{record['method']} ({record['technique']}; {record['tool']} {record['tool_version']}) {_day(record['at'])} "
                f"at {record['facility']} by {record['operator']}, verification {record['verification']} by {record['verified_by']}"
                + ("" if status == "verified" else f" [{status}]"))
    if status == "not_required":
        return "not data-bearing"
    if item.get("sanitization"):
        return f"OUTSTANDING: {item['sanitization']['method']} ({item['sanitization'].get('standard', STANDARD)}) required"
    return status


def summary_lines(fields: dict) -> list[str]:
    d = fields["dispositions"]
    s = fields.get("sanitization") or {}
    lines = [
        f"Takeback deal {fields['deal_id']} of partner {fields['partner_id']}, booked {fields['booked_at']}, "
        f"return window ended or closed by {fields['return_deadline']} (final status: {fields['status']}).",
        f"{fields['units_received']} units received: {d['refresh']} graded for refurbishment (Refresh), {d['recycle']} for recycling, {d['other']} other.",
    ]
    if s:
        lines.append(
            f"Data sanitization ({STANDARD}): {s['verified']} units verified, {s['not_required']} not data-bearing, "
            f"{s['outstanding']} outstanding, {s['failed']} failed verification."
        )
    return lines


def render_html_stream(text: CertificateText, digest: str, cert_id: str | None, status: str, verify_url: str | None, qr_svg: str | None = None) -> Iterator[str]:
    """The certificate as an HTML page, in pieces: a table row per serial with its sanitization and
    custody, the pickups' tracking, and the id, hash and verification URL (with its QR code)."""
    fields = text.fields
    provisional = status != "final"
    yield f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Certificate of recycling {escape(fields['deal_id'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.2em .5em;vertical-align:top}}
code{{word-break:break-all}}.custody{{font-size:.8em;color:#444}}.provisional{{border:2px solid #b00;color:#b00;padding:.5em}}.qr svg{{width:8em;height:8em}}</style>
</head><body>
<h1>Certificate of recycling and data sanitization</h1>
"""
    if provisional:
        s = fields.get("sanitization") or {}
        yield (f'<p class="provisional"><strong>Provisional:</strong> {s.get("outstanding", 0)} units await their sanitization and '
               f'{s.get("failed", 0)} failed verification. The final certificate is issued, with a new id, once every unit is verified.</p>\n')
    for line in summary_lines(fields):
        yield f"<p>{escape(line)}</p>\n"
    pickups = fields.get("pickups") or []
    if pickups:
        yield "<h2>Pickups</h2>\n<ul>\n"
        for pickup in pickups:
            milestones = ", ".join(f"{escape(e['value'])} {escape(_day(e['at']))}" for e in pickup.get("events", []))
            yield f"<li>{escape(pickup['pickup_id'])}: {escape(pickup.get('carrier') or '')} {escape(pickup.get('tracking_number') or '')}: {milestones}</li>\n"
        yield "</ul>\n"
    yield ("<h2>Units</h2>\n<table><thead><tr><th>Serial</th><th>Product</th><th>WEEE</th><th>Condition</th><th>Disposition</th>"
           "<th>Sanitization</th></tr></thead>\n<tbody>\n")
    rows = []
    for item in text.items():
        rows.append(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ({:g} y)</td><td>{}</td><td>{}</td></tr>\n<tr><td></td><td class=\"custody\" colspan=\"5\">{}</td></tr>\n".format(
                escape(item["serial_number"]), escape(item["product_id"]), item.get("weee_category", ""), escape(item["condition"]), item["age_years"],
                escape(item["disposition"]), escape(sanitization_line(item)), escape(custody_line(item)),
            )
        )
        if len(rows) >= 500:
            yield "".join(rows)
            rows = []
    yield "".join(rows)
    yield "</tbody></table>\n<h2>Verification</h2>\n"
    if cert_id:
        yield f"<p>Certificate id: <strong>{escape(cert_id)}</strong></p>\n"
    yield f"<p>Content hash (SHA-256 of the certificate JSON, keys sorted, no spaces): <code>{escape(digest)}</code></p>\n"
    if verify_url:
        yield f'<p>Verify it at <a href="{escape(verify_url)}">{escape(verify_url)}</a> (no key needed).</p>\n'
    if qr_svg:
        yield f'<div class="qr">{qr_svg}</div>\n'
    yield "</body></html>\n"


def render_html(content: dict, digest: str, cert_id: str | None = None, status: str = "final", verify_url: str | None = None) -> str:
    """The HTML of a certificate held as a dict (small ones, tests)."""
    return "".join(render_html_stream(CertificateText.of(canonical_json(content)), digest, cert_id, status, verify_url, qr_svg(verify_url) if verify_url else None))


def qr_svg(url: str) -> str:
    """The verification URL as an inline SVG QR code (segno: pure Python, offline)."""
    import segno

    return segno.make(url, error="m").svg_inline(scale=3, border=2)


def _latin1(text: str) -> str:
    """The PDF's standard fonts (Helvetica) cover Latin-1: anything else shows as `?`, never an error."""
    return text.encode("latin-1", "replace").decode("latin-1")


def render_pdf(text: CertificateText, digest: str, cert_id: str | None, status: str, verify_url: str | None, out) -> None:
    """The certificate as a PDF (reportlab), written to the binary file `out`: every serial with its
    sanitization and custody, two lines each, pages drawn and let go one by one."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen.canvas import Canvas

    fields = text.fields
    width, height = A4
    margin, size, leading = 36, 6.5, 8.2
    canvas = Canvas(out, pagesize=A4, pageCompression=1, invariant=1)
    canvas.setTitle(f"Certificate of recycling {fields['deal_id']}")
    canvas.setAuthor("takeback")
    page = [1]

    def footer() -> None:
        canvas.setFont("Helvetica", 6)
        canvas.drawString(margin, 20, _latin1(f"Certificate {cert_id or '-'} - deal {fields['deal_id']} - SHA-256 {digest} - page {page[0]}"))

    def new_page() -> object:
        footer()
        canvas.showPage()
        page[0] += 1
        t = canvas.beginText(margin, height - margin)
        t.setFont("Helvetica", size, leading)
        return t

    from reportlab.lib.utils import simpleSplit

    y_top = height - margin
    qr = 80 if verify_url else 0
    canvas.setFont("Helvetica-Bold", 14)
    canvas.drawString(margin, y_top, "Certificate of recycling and data sanitization")
    if verify_url:
        _draw_qr(canvas, verify_url, width - margin - qr + 8, y_top - qr + 4, qr - 8)
    t = canvas.beginText(margin, y_top - 22)
    t.setFont("Helvetica", 8, 10)
    header = []
    if status != "final":
        s = fields.get("sanitization") or {}
        header.append(("red", f"PROVISIONAL: {s.get('outstanding', 0)} units await sanitization, {s.get('failed', 0)} failed verification. "
                              "The final certificate is issued, with a new id, once every unit is verified."))
    header += [("black", line) for line in summary_lines(fields)]
    header += [("black", f"Certificate id: {cert_id or '-'}"), ("black", f"Content hash (SHA-256 of the certificate JSON, keys sorted, no spaces): {digest}")]
    if verify_url:
        header.append(("black", f"Verify (no key needed): {verify_url}"))
    for pickup in fields.get("pickups") or []:
        milestones = ", ".join(f"{e['value']} {_day(e['at'])}" for e in pickup.get("events", []))
        header.append(("black", f"Pickup {pickup['pickup_id']} {pickup.get('carrier') or ''} {pickup.get('tracking_number') or ''}: {milestones}"))
    for colour, line in header:  # wrapped beside the QR code
        t.setFillColorRGB(*((0.7, 0, 0) if colour == "red" else (0, 0, 0)))
        for part in simpleSplit(_latin1(line), "Helvetica", 8, width - 2 * margin - qr):
            t.textLine(part)
    canvas.drawText(t)
    t = canvas.beginText(margin, min(t.getY(), y_top - qr) - 14)
    t.setFont("Helvetica", size, leading)
    bottom = margin + 6
    for item in text.items():
        if t.getY() - 2 * leading < bottom:
            canvas.drawText(t)
            t = new_page()
        t.setFillColorRGB(0, 0, 0)
        t.textLine(_latin1(f"{item['serial_number']}  {item['product_id']}  WEEE {item.get('weee_category', '')}  {item['condition']} {item['age_years']:g} y  "
                           f"{item['disposition']}  |  {sanitization_line(item)}"))
        t.setFillColorRGB(0.3, 0.3, 0.3)
        t.textLine(_latin1("    " + custody_line(item))[:400])
    canvas.drawText(t)
    footer()
    canvas.showPage()
    canvas.save()


def _draw_qr(canvas, url: str, x: float, y: float, size: float) -> None:
    import segno

    matrix = segno.make(url, error="m").matrix
    cell = size / len(matrix)
    path = canvas.beginPath()
    for row, cells in enumerate(matrix):
        for col, dark in enumerate(cells):
            if dark:
                path.rect(x + col * cell, y + size - (row + 1) * cell, cell, cell)
    canvas.drawPath(path, stroke=0, fill=1)


def verification_url(base_url: str, cert_id: str, digest: str) -> str:
    return f"{base_url.rstrip('/')}/v1/certificates/{cert_id}/verify?hash={digest}"


def isoformat(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None
