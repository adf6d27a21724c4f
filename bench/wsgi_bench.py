"""The app plus a bare endpoint, so both are measured on the same gunicorn: `bench.wsgi_bench:app`."""

from app import create_app

app = create_app()


@app.get("/bench/bare")
def bare():
    """Return a constant: the cost of Flask and gunicorn alone, with no database and no template."""
    return "ok"
