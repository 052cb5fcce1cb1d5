"""mysite/settings/production.py for examples/django-ingress: what Django needs behind an
Ingress when wsgiscale serves it. Nothing here reads X-Forwarded-* headers: the server has
already turned the trusted proxy's headers into REMOTE_ADDR, wsgi.url_scheme and HTTP_HOST."""
from .base import *  # noqa: F401,F403

DEBUG = False
ALLOWED_HOSTS = ["mysite.example.com"]
CSRF_TRUSTED_ORIGINS = ["https://mysite.example.com"]

# request.is_secure() is True for https requests (wsgi.url_scheme comes from the Ingress's
# X-Forwarded-Proto), so these work without SECURE_PROXY_SSL_HEADER:
SECURE_SSL_REDIRECT = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = 3600

# collectstatic (at image build) writes here; the WsgiApp's spec.static serves it at STATIC_URL.
STATIC_URL = "/static/"
STATIC_ROOT = "/srv/app/staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}

# Do not set these with wsgiscale: the server already applied the headers, from trusted peers
# only; reading them again in Django would trust whoever sent them.
# SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# USE_X_FORWARDED_HOST = True
