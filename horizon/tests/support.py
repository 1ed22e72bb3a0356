"""Test support: Django configured with the development settings, a stub
Navigator API on loopback, and fake requests with a catalog.

Run with Debian's Python: ``/usr/bin/python3 -m unittest discover -s tests -t .``
from ``horizon/``.
"""

import http.server
import json
import os
import sys
import threading
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (ROOT, os.path.join(ROOT, 'devserver')):
    if path not in sys.path:
        sys.path.insert(0, path)

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'navigator_devserver')
os.environ.setdefault('HORIZON_KEYSTONE_URL', 'http://127.0.0.1:9/v3')
os.environ.setdefault('HORIZON_SECRET_KEY', 'unit-tests-only')

import django  # noqa: E402

django.setup()

from django.contrib.messages.storage import default_storage  # noqa: E402
from django.test import RequestFactory  # noqa: E402


class StubNavigator(object):
    """A Navigator API on 127.0.0.1 answering from ``self.routes``.

    ``routes[(method, path)] = (status, body)``; requests are recorded in
    ``self.requests`` as (method, path, headers, json body).
    """

    def __init__(self):
        self.routes = {}
        self.requests = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get('Content-Length') or 0)
                raw = self.rfile.read(length) if length else b''
                body = json.loads(raw) if raw else None
                path = self.path.split('?', 1)[0]
                stub.requests.append((self.command, self.path, dict(self.headers), body))
                status, answer = stub.routes.get((self.command, path),
                                                 (404, {'error': {'code': 404, 'title': 'Not Found',
                                                                  'message': 'no route'}}))
                data = b'' if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def catalog(navigator_url, region='RegionTest', compute=True):
    services = [{'type': 'port-forwarding', 'name': 'navigator', 'endpoints': [
        {'interface': 'public', 'region': region, 'region_id': region, 'url': navigator_url},
        {'interface': 'public', 'region': 'Elsewhere', 'region_id': 'Elsewhere',
         'url': 'http://127.0.0.1:9'},
    ]}]
    if compute:
        services.append({'type': 'compute', 'name': 'nova', 'endpoints': [
            {'interface': 'public', 'region': region, 'region_id': region,
             'url': 'http://127.0.0.1:9/compute/v2.1'}]})
    return services


def request(navigator_url, region='RegionTest', compute=True, token='user-token',
            current_region=None):
    """A GET request whose user has ``token``, a catalog in ``region`` and
    ``current_region`` (default: ``region``) selected in Horizon."""
    req = RequestFactory().get('/project/instances/i-1/')
    req.user = types.SimpleNamespace(
        token=types.SimpleNamespace(id=token),
        service_catalog=catalog(navigator_url, region, compute),
        services_region=current_region or region,
        is_authenticated=True,
        tenant_id='project-a',
        project_id='project-a',
        has_perms=lambda perms: True,
    )
    req.session = {}
    req._messages = default_storage(req)
    return req


def forward(**fields):
    body = {
        'id': 'f-1', 'project_id': 'project-a', 'description': '',
        'protocol': 'tcp', 'external_address': '203.0.113.5',
        'external_port': 20000, 'internal_ip_address': '10.0.0.5',
        'internal_port': 22, 'instance_id': None, 'proxy': 'proxy-1',
        'status': 'ACTIVE', 'status_reason': None,
        'created_at': '2026-11-25T00:00:00Z', 'updated_at': '2026-11-25T00:00:00Z',
    }
    body.update(fields)
    return body


def server(id='i-1', name='web', addresses=None):
    """A Nova server as Horizon's nova API returns it (attribute access)."""
    return types.SimpleNamespace(
        id=id, name=name,
        addresses=addresses if addresses is not None else {
            'private': [{'addr': '10.0.0.5', 'OS-EXT-IPS:type': 'fixed'},
                        {'addr': '198.51.100.7', 'OS-EXT-IPS:type': 'floating'}]},
    )
