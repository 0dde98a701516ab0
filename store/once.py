"""Exactly-once writes: a row guarded by a unique constraint is written at most once."""

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session


def insert_once(session: Session, row) -> bool:
    """Insert the row; False if an equal one exists already (the constraint refused it)."""
    session.add(row)
    try:
        session.commit()
        return True
    except IntegrityError:
        session.rollback()
        return False
