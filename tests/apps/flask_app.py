"""A small Flask app used by the process tests and the benchmarks."""
from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/json")
def json_route():
    return jsonify(message="hello", items=list(range(10)))


@app.post("/echo")
def echo():
    return jsonify(length=len(request.get_data()), form=request.form.to_dict())


@app.get("/sleep")
def sleep():
    import time

    time.sleep(int(request.args.get("ms", "50")) / 1000)
    return jsonify(slept=True)
