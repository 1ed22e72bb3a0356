"""What the plugin asks Nova, when the catalog has it: instance names for
the table, instance choices for the create form, and which forwards belong
to one instance (by ``instance_id`` or by one of its fixed addresses).

Everything here degrades to "no Nova": a missing or failing Nova never
breaks the panel, it only loses the instance names.
"""

import logging

LOG = logging.getLogger(__name__)


def nova_enabled(request):
    from openstack_dashboard.api import base
    try:
        return base.is_service_enabled(request, 'compute')
    except Exception:
        return False


def servers(request):
    """The project's instances, or [] without (a working) Nova."""
    if not nova_enabled(request):
        return []
    try:
        from openstack_dashboard.api import nova
        found, _has_more = nova.server_list(request)
        return list(found)
    except Exception as e:
        LOG.warning('cannot list instances for port forwards: %s', e)
        return []


def fixed_addresses(server):
    """The instance's fixed (not floating) IP addresses, in Nova's order."""
    result = []
    for entries in (getattr(server, 'addresses', None) or {}).values():
        for entry in entries or []:
            if entry.get('OS-EXT-IPS:type', 'fixed') == 'fixed' and entry.get('addr'):
                result.append(entry['addr'])
    return result


def first_address(server):
    addresses = fixed_addresses(server)
    return addresses[0] if addresses else None


def label(server):
    addresses = fixed_addresses(server)
    name = getattr(server, 'name', None) or server.id
    return '%s (%s)' % (name, ', '.join(addresses)) if addresses else name


def belongs_to(forward, server):
    """Whether ``forward`` targets ``server``: by id, or by fixed address."""
    if forward.instance_id:
        return forward.instance_id == server.id
    return forward.internal_ip_address in fixed_addresses(server)


def name_instances(request, forwards, found=None):
    """Fills ``instance_name`` (and a missing ``instance_id`` matched by
    address) on each forward from Nova's instance list."""
    found = servers(request) if found is None else found
    if not found:
        return forwards
    by_address = {}
    for server in found:
        for address in fixed_addresses(server):
            by_address.setdefault(address, server)
    by_id = {server.id: server for server in found}
    for forward in forwards:
        server = by_id.get(forward.instance_id) if forward.instance_id else \
            by_address.get(forward.internal_ip_address)
        if server is not None:
            forward.instance_id = server.id
            forward.instance_name = getattr(server, 'name', None) or server.id
    return forwards


def forwards_of(request, server, list_forwards):
    """The forwards of one instance; ``list_forwards(request)`` lists all."""
    return [f for f in list_forwards(request) if belongs_to(f, server)]
