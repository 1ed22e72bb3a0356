"""Navigator's REST API (v1), called with the logged-in user's own token.

The endpoint is the user's catalog entry of type ``port-forwarding`` in the
region Horizon uses for services (``request.user.services_region``) and the
interface of ``OPENSTACK_ENDPOINT_TYPE``, exactly as Horizon finds Nova or
Neutron. Errors become Horizon exception classes so that
``horizon.exceptions.handle`` shows them as messages (or logs the user out
on 401) instead of raising a traceback page.
"""

import logging
import re
from urllib.parse import quote

import requests
from django.conf import settings
from django.utils.translation import gettext_lazy as _
from horizon import exceptions

LOG = logging.getLogger(__name__)

SERVICE_TYPE = 'port-forwarding'
#: Seconds to wait for Navigator before telling the user it is unavailable.
DEFAULT_TIMEOUT = 10

# Navigator words validation errors as "invalid <field>: <why>".
_FIELD_ERROR = re.compile(r'^invalid ([a-z_]+): (.+)$', re.DOTALL)
_PORT_FIELDS = ('external_port', 'internal_port')


class NavigatorError(exceptions.HorizonException):
    """Base of every error this client raises; ``str()`` is user-facing."""

    status = None
    field = None

    def __init__(self, message, status=None, field=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field

    def __str__(self):
        return str(self.message)


class BadRequest(NavigatorError, exceptions.BadRequest):
    """400: a request field Navigator refused (``field`` names it when known)."""


class Conflict(NavigatorError, exceptions.Conflict):
    """409: e.g. the external port is taken."""


class NotFound(NavigatorError, exceptions.NotFound):
    """404: the forward does not exist or belongs to another project."""


class Unauthorized(NavigatorError, exceptions.NotAuthorized):
    """401: the token expired or was revoked; Horizon logs the user out."""


class Forbidden(NavigatorError, exceptions.NotAvailable):
    """403: Navigator's policy forbids it (e.g. a reader creating a forward).

    Recoverable (a message), unlike 401: the session itself is fine.
    """


class Unavailable(NavigatorError, exceptions.NotAvailable):
    """Navigator could not be reached, timed out, or failed (5xx)."""


class PortForward(object):
    """One forward as the API returns it, with display helpers."""

    FIELDS = ('id', 'project_id', 'description', 'protocol',
              'external_address', 'external_port', 'internal_ip_address',
              'internal_port', 'instance_id', 'proxy', 'status',
              'status_reason', 'created_at', 'updated_at',
              'allowed_cidrs', 'max_connections', 'proxy_protocol')

    #: The counters of ``usage`` (``GET /v1/forwards/{id}`` only).
    USAGE_FIELDS = ('bytes_in', 'bytes_out', 'connections_total',
                    'connections_active', 'last_connection_at')

    def __init__(self, body):
        for name in self.FIELDS:
            setattr(self, name, body.get(name))
        # Servers before the traffic controls do not send them.
        self.allowed_cidrs = self.allowed_cidrs or []
        self.proxy_protocol = self.proxy_protocol or 'none'
        #: Filled in by the views when Nova can name the instance.
        self.instance_name = None
        #: What the proxy counted (a dict of USAGE_FIELDS), or None: lists,
        #: creates and updates do not carry it, and a show whose agent could
        #: not give it says why in ``usage_unavailable``.
        usage = body.get('usage')
        self.usage = ({k: usage.get(k) for k in self.USAGE_FIELDS}
                      if isinstance(usage, dict) else None)
        self.usage_unavailable = body.get('usage_unavailable')

    @staticmethod
    def _join(address, port):
        if address and ':' in address:  # IPv6
            return '[%s]:%s' % (address, port)
        return '%s:%s' % (address, port)

    @property
    def external(self):
        return self._join(self.external_address, self.external_port)

    @property
    def target(self):
        return self._join(self.internal_ip_address, self.internal_port)

    @property
    def controls(self):
        """The traffic controls in one line, or '-' when there are none."""
        parts = []
        if self.allowed_cidrs:
            parts.append(_('from %s') % ', '.join(self.allowed_cidrs))
        if self.max_connections:
            parts.append(_('at most %s connections') % self.max_connections)
        if self.proxy_protocol not in (None, '', 'none'):
            parts.append(_('PROXY %s') % self.proxy_protocol)
        return '; '.join(str(p) for p in parts) or '-'

    @property
    def name(self):
        # Horizon's delete confirmation names each object by `name`.
        return self.external


def field_of(status, message):
    """The form field an API error message is about, or None.

    400s name their field; a 409 about a taken port belongs next to the
    external port the user asked for.
    """
    match = _FIELD_ERROR.match(message or '')
    if match:
        return match.group(1)
    if status == 409 and 'port' in (message or ''):
        return 'external_port'
    return None


def _error_for(status, message):
    if status == 400:
        match = _FIELD_ERROR.match(message or '')
        field = match.group(1) if match else None
        text = match.group(2) if match else message
        return BadRequest(text, status, field)
    if status == 409:
        return Conflict(message, status, field_of(status, message))
    if status == 404:
        return NotFound(message, status)
    if status == 401:
        return Unauthorized(message, status)
    if status == 403:
        return Forbidden(_('Not allowed: %s') % message, status)
    return Unavailable(
        _('Navigator failed (HTTP %(status)s): %(message)s')
        % {'status': status, 'message': message}, status)


def _message(response):
    try:
        return response.json()['error']['message']
    except (ValueError, KeyError, TypeError):
        return (response.text or response.reason or '').strip()[:300]


def endpoint(request):
    """Navigator's base URL from the user's catalog (no trailing ``/v1``)."""
    from openstack_dashboard.api import base
    url = base.url_for(request, SERVICE_TYPE).rstrip('/')
    if url.endswith('/v1'):
        url = url[:-3]
    return url


def _verify():
    if getattr(settings, 'OPENSTACK_SSL_NO_VERIFY', False):
        return False
    return getattr(settings, 'OPENSTACK_SSL_CACERT', None) or True


def call(request, method, path, body=None, params=None, base_url=None,
         token=None):
    """One API call; returns the decoded JSON body (None for 204).

    ``base_url`` and ``token`` default to the catalog endpoint and the
    user's token; tests pass them directly.
    """
    base_url = base_url or endpoint(request)
    token = token or request.user.token.id
    url = '%s/v1/%s' % (base_url, path)
    timeout = getattr(settings, 'NAVIGATOR_API_TIMEOUT', DEFAULT_TIMEOUT)
    headers = {'X-Auth-Token': token, 'Accept': 'application/json'}
    # Pass Horizon's request id along so one id follows a click through both logs.
    request_id = getattr(request, 'navigator_request_id', None)
    if request_id:
        headers['X-OpenStack-Request-Id'] = request_id
    try:
        response = requests.request(method, url, json=body, params=params,
                                    headers=headers, timeout=timeout,
                                    verify=_verify())
    except requests.Timeout as e:
        LOG.warning('Navigator %s %s timed out: %s', method, url, e)
        raise Unavailable(
            _('Navigator (port forwarding) is unavailable: no answer '
              'within %s seconds') % timeout)
    except requests.RequestException as e:
        LOG.warning('Navigator %s %s failed: %s', method, url, e)
        raise Unavailable(
            _('Navigator (port forwarding) is unavailable: cannot connect '
              'to its API'))
    if response.status_code >= 400:
        message = _message(response)
        LOG.info('Navigator %s %s: %s %s', method, url,
                 response.status_code, message)
        raise _error_for(response.status_code, message)
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise Unavailable(_('Navigator returned a response that is not JSON'))


def forward_list(request, **filters):
    """Every forward of the user's project (follows pagination links)."""
    params = {k: v for k, v in filters.items() if v is not None}
    params.setdefault('limit', 1000)
    forwards = []
    for _page in range(100):
        body = call(request, 'GET', 'forwards', params=params)
        page = [PortForward(f) for f in body.get('forwards', [])]
        forwards.extend(page)
        has_next = any(link.get('rel') == 'next'
                       for link in body.get('forwards_links', []))
        if not has_next or not page:
            break
        params = dict(params, marker=page[-1].id)
    return forwards


def human_bytes(n):
    """``1536`` -> ``'1536 (1.5 KiB)'``; below 1 KiB just the number."""
    if n is None:
        return '-'
    value, unit = float(n), None
    for name in ('KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'):
        if value < 1024:
            break
        value /= 1024
        unit = name
    return '%d (%.1f %s)' % (n, value, unit) if unit else str(n)


def forward_get(request, forward_id):
    """One forward, with its ``usage`` (or ``usage_unavailable``)."""
    return PortForward(call(request, 'GET', 'forwards/%s' % forward_id)['forward'])


def forward_create(request, **fields):
    body = {'forward': {k: v for k, v in fields.items()
                        if v not in (None, '')}}
    return PortForward(call(request, 'POST', 'forwards', body=body)['forward'])


def forward_update(request, forward_id, nullable=(), **fields):
    """Changes the given fields; a None is left out, except for the fields
    named in ``nullable``, where it is sent as null (removes the value,
    e.g. ``max_connections``)."""
    body = {'forward': {k: v for k, v in fields.items()
                        if v is not None or k in nullable}}
    return PortForward(
        call(request, 'PUT', 'forwards/%s' % forward_id, body=body)['forward'])


def forward_delete(request, forward_id):
    call(request, 'DELETE', 'forwards/%s' % forward_id)


def quota_details(request, project_id=None):
    """The project's quota: ``{'forwards': {'limit': L, 'used': U},
    'ports': {...}}`` (``GET /v1/quotas/{project_id}/details``; -1 is
    unlimited). Default: the user's project."""
    project_id = project_id or request.user.project_id
    body = call(request, 'GET', 'quotas/%s/details' % quote(project_id, safe=''))
    return body['quota']


def quota_full(details):
    """The resources (``forwards``, ``ports``) at or over their limit: a
    create would be refused with 409."""
    return [name for name in ('forwards', 'ports')
            if 0 <= details[name]['limit'] <= details[name]['used']]


def is_enabled(request):
    from openstack_dashboard.api import base
    return base.is_service_enabled(request, SERVICE_TYPE)
