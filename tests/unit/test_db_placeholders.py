"""``db.numbered_placeholders``: psycopg's named placeholders as PostgreSQL's numbered ones."""

from __future__ import annotations

from sqlalchemy import bindparam, column, create_engine, literal_column, select, table

from atelier.core.db import numbered_placeholders


def test_each_name_gets_one_number_in_order_of_first_use_and_escaped_percents_survive() -> None:
    sql, order = numbered_placeholders("SELECT %(b)s, %(a)s, %(b)s WHERE x LIKE 'a%%' AND y = %(c_1)s % 2")
    assert sql == b"SELECT $1, $2, $1 WHERE x LIKE 'a%' AND y = $3 % 2"
    assert order == ("b", "a", "c_1")


def test_a_compiled_statement_numbers_every_bind_parameter() -> None:
    notes = table("notes", column("n"), column("label"))
    stmt = (
        select(notes.c.n, literal_column("'100%'").label("full"))
        .where(notes.c.n == bindparam("p_n"), notes.c.label == bindparam("p_label"))
        .where(notes.c.n != bindparam("p_n"))
    )
    sql, order = numbered_placeholders(str(stmt.compile(dialect=create_engine("postgresql+psycopg://").dialect)))
    assert order == ("p_n", "p_label")
    assert b"n = $1" in sql and b"label = $2" in sql and b"n != $1" in sql
    assert b"'100%'" in sql and b"%(" not in sql
