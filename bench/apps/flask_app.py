"""A Flask app with a JSON route ("/") and a "/pid" route used by the new-worker timing."""
import os

from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/")
def index():
    return jsonify(message="Hello, World!", framework="flask", items=[1, 2, 3])


@app.route("/pid")
def pid():
    return jsonify(pid=os.getpid())
