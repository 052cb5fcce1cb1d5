"""A Django project as it runs in production: DEBUG off, hashed static file names from
`collectstatic` (ManifestStaticFilesStorage) in STATIC_ROOT, which the server serves."""
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djstatic.urls"
INSTALLED_APPS = ["django.contrib.staticfiles"]
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
STATIC_URL = "/static/"
STATIC_ROOT = os.environ.get("DJSTATIC_ROOT", str(BASE_DIR / "collected"))
STATICFILES_DIRS = [BASE_DIR / "assets"]
STORAGES = {
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}
