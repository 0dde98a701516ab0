"""Certificates (issue 14): the streamed canonical JSON is the canonical JSON its hash is of, read back
a window at a time; the PDF's text holds every serial; the HTML escapes what it shows."""

import io
import json

from pypdf import PdfReader

from domain.certificate import CertificateText, Later, Streamed, canonical_json, certificate_id, render_html, render_pdf, stream_canonical


def content(serials: list[str]) -> dict:
    return {
        "deal_id": "D1", "partner_id": "P1", "status": "closed", "booked_at": "2026-01-05T00:00:00+00:00", "return_deadline": "2027-01-05T00:00:00+00:00",
        "units_received": len(serials), "dispositions": {"refresh": len(serials), "recycle": 0, "other": 0},
        "items": [
            {"serial_number": s, "product_id": "C9300-48P", "condition": "working", "age_years": 2.0, "disposition": "refresh", "weee_category": 6,
             "data_bearing": True, "pickup_id": "D1-p1", "tracking_number": "SIM1", "sanitization": {"method": "purge", "standard": "NIST SP 800-88 Rev. 1"},
             "sanitization_record": {"method": "purge", "technique": "crypto erase", "tool": "t", "tool_version": "1", "operator": "Olga", "facility": "Toronto",
                                     "at": "2026-02-01T00:00:00+00:00", "verification": "passed", "verified_by": "Victor", "standard": "NIST SP 800-88 Rev. 1"},
             "sanitization_status": "verified",
             "custody": [{"kind": "committed", "at": "2026-01-05T00:00:00+00:00", "actor": "partner:P1", "value": "C9300-48P"},
                         {"kind": "received", "at": "2026-01-20T00:00:00+00:00", "actor": 'ops:a "quoted" ],"partner_id":', "value": "C9300-48P"}]}
            for s in serials
        ],
        "pickups": [{"pickup_id": "D1-p1", "carrier": "SimCarrier", "tracking_number": "SIM1", "events": [{"at": "2026-01-10T00:00:00+00:00", "value": "delivered"}]}],
        "sanitization": {"verified": len(serials), "not_required": 0, "outstanding": 0, "failed": 0, "complete": True},
    }


def test_the_streamed_json_is_the_canonical_json_and_reads_back_item_by_item():
    whole = content([f"SN-{i:04d}" for i in range(700)])
    fields = {**whole, "items": Streamed(iter(whole["items"])), "sanitization": Later(lambda: whole["sanitization"])}
    text = "".join(stream_canonical(fields))
    assert text == canonical_json(whole)
    for window in (50, 4096, 1 << 20):  # items split across windows, or many in one
        read = CertificateText.of(text, window=window)
        assert list(read.items()) == whole["items"]
        assert read.fields == {k: v for k, v in whole.items() if k != "items"}
        assert "".join(read.chunks()) == text
    assert certificate_id("D1", "ab" * 32) == certificate_id("D1", "ab" * 32) != certificate_id("D2", "ab" * 32)


def test_the_pdf_text_holds_every_serial_over_many_pages():
    serials = [f"FOC{i:05d}X" for i in range(400)]
    text = canonical_json(content(serials))
    out = io.BytesIO()
    render_pdf(CertificateText.of(text), "f" * 64, "TBC-0123456789ABCDEF0123", "final", "https://takeback.example/v1/certificates/TBC-0123456789ABCDEF0123/verify?hash=" + "f" * 64, out)
    reader = PdfReader(io.BytesIO(out.getvalue()))
    assert len(reader.pages) > 5
    extracted = "\n".join(page.extract_text() for page in reader.pages)
    assert [s for s in serials if s not in extracted] == []
    assert "TBC-0123456789ABCDEF0123" in extracted and "f" * 64 in extracted and "purge" in extracted and "verification passed by Victor" in extracted


def test_the_html_escapes_what_it_shows_and_marks_a_provisional_certificate():
    whole = content(["<script>alert(1)</script>"])
    whole["sanitization"] = {"verified": 0, "not_required": 0, "outstanding": 1, "failed": 0, "complete": False}
    html = render_html(whole, "a" * 64, "TBC-X", status="provisional", verify_url="https://t.example/v1/certificates/TBC-X/verify?hash=" + "a" * 64)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "Provisional" in html and "TBC-X" in html and "<svg" in html and json.dumps("a" * 64).strip('"') in html
