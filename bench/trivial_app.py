"""The floor of the read path: a FastAPI endpoint that does nothing, served the same way."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/ping")
async def ping() -> dict:
    return {"ok": True}
