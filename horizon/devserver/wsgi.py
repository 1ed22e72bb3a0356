"""WSGI entry point for uwsgi (see navigator_devserver.py)."""

import os

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'navigator_devserver')

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
