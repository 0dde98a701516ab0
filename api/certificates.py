"""Certificate answers shared by the API routes and the console: JSON, HTML and PDF, streamed from the store."""

import asyncio
import json
import tempfile

from fastapi import Request
from fastapi.responses import StreamingResponse

from api.deps import Caller
from api.problems import Problem
from domain.certificate import HASH_ALGORITHM, qr_svg, render_html_stream, render_pdf, verification_url
from settings import Settings
from store import custody
from store.db import session_scope


def actor_of(caller: Caller) -> str:
    """Who did it, for custody events and reasons: the key's account (`ops:<owner>`, `partner:<id>`)."""
    return caller.account or f"key:{caller.key_id}"


def public_base(settings: Settings, request: Request) -> str:
    return settings.public_url or str(request.base_url)


async def certificate_answer(settings: Settings, request: Request, deal_id: str, format: str = "json"):
    url = settings.effective_database_url

    def load():
        with session_scope(url) as session:
            return custody.stored_certificate(session, deal_id)

    row = await asyncio.to_thread(load)
    if row is None:
        raise Problem(404, f"deal {deal_id} has no certificate yet: it is issued when the deal closes", "certificate-not-issued")
    text = await asyncio.to_thread(custody.certificate_text, url, row.certificate_id, deal_id)
    verify = verification_url(public_base(settings, request), row.certificate_id, row.content_hash) if row.certificate_id else None
    headers = {"X-Content-Hash": row.content_hash, "X-Certificate-Id": row.certificate_id or "", "X-Certificate-Status": row.status}
    if format == "pdf":
        def pdf():
            spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)
            render_pdf(text, row.content_hash, row.certificate_id, row.status, verify, spool)
            spool.seek(0)
            return spool

        spool = await asyncio.to_thread(pdf)

        def chunks():
            with spool:
                while block := spool.read(1 << 20):
                    yield block

        headers["Content-Disposition"] = f'inline; filename="certificate-{deal_id}.pdf"'
        return StreamingResponse(chunks(), media_type="application/pdf", headers=headers)
    if format == "html" or "text/html" in request.headers.get("accept", ""):
        return StreamingResponse(
            render_html_stream(text, row.content_hash, row.certificate_id, row.status, verify, qr_svg(verify) if verify else None),
            media_type="text/html; charset=utf-8", headers=headers,
        )
    head = {
        "deal_id": deal_id, "certificate_id": row.certificate_id, "status": row.status, "issued_at": row.issued_at.isoformat(),
        "content_hash": row.content_hash, "hash_algorithm": HASH_ALGORITHM, "verification_url": verify,
    }

    def body():
        yield json.dumps(head)[:-1] + ',"certificate":'
        yield from text.chunks()
        yield "}"

    return StreamingResponse(body(), media_type="application/json", headers=headers)
