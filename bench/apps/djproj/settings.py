"""Minimal Django project: no database, one JSON view (and /pid for the new-worker timing)."""
import os

SECRET_KEY = "bench-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djproj.urls"
INSTALLED_APPS = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
DATABASES = {}
USE_TZ = True
LOGGING_CONFIG = None

# The static-file scenarios of bench/run.py: whitenoise serving STATIC_ROOT at STATIC_URL from
# the workers, against the servers' own static mounts (the same files).
STATIC_URL = "/static/"
STATIC_ROOT = os.environ.get("BENCH_STATIC_ROOT")
if os.environ.get("BENCH_WHITENOISE"):
    INSTALLED_APPS = ["django.contrib.staticfiles"]
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")
