"""The schema is Alembic's: migrations match the models, and go down and up again."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

from store import migrate


def test_upgrade_matches_the_models_and_downgrade_undoes_it(database_url):
    engine = create_engine(database_url)
    migrate.upgrade(engine)
    migrate.upgrade(engine)  # at head already: nothing to do
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == [], "the models changed without a migration: add one with alembic revision --autogenerate"
    tables = set(inspect(engine).get_table_names())
    assert {"deal", "returneditem", "incentiveledger", "remindersent", "emailmessage", "apikey", "treeplanted"} <= tables

    migrate.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(engine)
    assert tables <= set(inspect(engine).get_table_names())
    engine.dispose()
