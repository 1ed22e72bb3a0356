"""Create and retarget forms.

Ranges and address rules are Navigator's to enforce (they depend on the
proxy's pool and the deployment's target policy), so the forms only check
types and pass the rest on; Navigator's "invalid <field>: ..." errors are
put next to that field.
"""

import logging
import re

from django.utils.translation import gettext_lazy as _
from horizon import exceptions
from horizon import forms
from horizon import messages

from navigator_horizon import api
from navigator_horizon import instances

LOG = logging.getLogger(__name__)

PROTOCOL_CHOICES = (('tcp', 'TCP'), ('udp', 'UDP'))
PROXY_PROTOCOL_CHOICES = (('none', _('None')), ('v1', _('v1 (text)')),
                          ('v2', _('v2 (binary)')))


def cidr_list(text):
    """The allowlist field as the API's list (Navigator judges each)."""
    return [c for c in re.split(r'[\s,]+', text or '') if c]


def show_api_error(form, request, error, failure):
    """Puts an API error next to its field, or above the form.

    Returns False so that Horizon redisplays the form with the error.
    """
    field = getattr(error, 'field', None)
    if field in form.fields:
        form.add_error(field, str(error))
    elif isinstance(error, api.NavigatorError) and not isinstance(
            error, api.Unauthorized):
        form.api_error('%s %s' % (failure, error))
    else:
        # Unauthorized logs the user out; anything else is a message.
        exceptions.handle(request, failure)
    return False


def allowed_cidrs_field():
    """The traffic controls' fields, shared by the create and update forms
    (a factory each, so that every form class gets its own field)."""
    return forms.CharField(
        label=_("Allowed Sources"), required=False,
        help_text=_("CIDRs allowed to connect, separated by commas or "
                    "spaces (e.g. 192.0.2.0/24, 2001:db8::/32). Empty "
                    "allows everyone."))


def max_connections_field():
    return forms.IntegerField(
        label=_("Max Connections"), required=False, min_value=1,
        max_value=1000000,
        help_text=_("Most connections (UDP sessions) open at once. Empty "
                    "is no limit."))


def proxy_protocol_field():
    return forms.ChoiceField(
        label=_("PROXY Protocol"), required=False,
        choices=PROXY_PROTOCOL_CHOICES,
        help_text=_("Send the client's address to the instance in "
                    "HAProxy's PROXY header (TCP on relay proxies; the "
                    "instance must expect it)."))


class CreateForm(forms.SelfHandlingForm):
    instance_id = forms.ChoiceField(
        label=_("Instance"), required=False,
        help_text=_("The instance to forward to. Its first fixed IP address "
                    "is used unless you give the internal IP address."))
    internal_ip_address = forms.CharField(
        label=_("Internal IP Address"), required=False, max_length=64,
        help_text=_("IPv4 or IPv6 address of the target."))
    internal_port = forms.IntegerField(
        label=_("Internal Port"),
        help_text=_("Port on the target (1-65535)."))
    protocol = forms.ChoiceField(label=_("Protocol"),
                                         choices=PROTOCOL_CHOICES)
    external_port = forms.IntegerField(
        label=_("External Port"), required=False,
        help_text=_("Leave empty to get a free port from the proxy's range."))
    external_address = forms.CharField(
        label=_("External Address"), required=False, max_length=64,
        help_text=_("Leave empty to let Navigator choose."))
    description = forms.CharField(label=_("Description"), required=False,
                                  max_length=255)
    allowed_cidrs = allowed_cidrs_field()
    max_connections = max_connections_field()
    proxy_protocol = proxy_protocol_field()

    def __init__(self, request, *args, **kwargs):
        super().__init__(request, *args, **kwargs)
        self.servers = instances.servers(request)
        if self.servers:
            choices = [('', _("No instance (enter an IP address)"))]
            choices += [(s.id, instances.label(s)) for s in self.servers]
            self.fields['instance_id'].choices = choices
        else:
            # Without Nova the target is a plain IP address.
            del self.fields['instance_id']

    def clean(self):
        data = super().clean()
        if not data.get('internal_ip_address'):
            server = next((s for s in self.servers
                           if s.id == data.get('instance_id')), None)
            address = instances.first_address(server) if server else None
            if address:
                data['internal_ip_address'] = address
            elif 'internal_ip_address' not in self.errors:
                self.add_error('internal_ip_address',
                               _("Enter the target's IP address."))
        return data

    def handle(self, request, data):
        try:
            forward = api.forward_create(
                request,
                protocol=data['protocol'],
                internal_ip_address=data['internal_ip_address'],
                internal_port=data['internal_port'],
                external_port=data.get('external_port'),
                external_address=data.get('external_address'),
                instance_id=data.get('instance_id') or None,
                description=data.get('description'),
                allowed_cidrs=cidr_list(data.get('allowed_cidrs')) or None,
                max_connections=data.get('max_connections'),
                proxy_protocol=data.get('proxy_protocol') or None)
        except api.NavigatorError as e:
            return show_api_error(self, request, e,
                                  _('Unable to create the port forward.'))
        messages.success(request, _('Created port forward %(external)s to '
                                    '%(target)s.') % {
                                        'external': forward.external,
                                        'target': forward.target})
        return forward


class RetargetForm(forms.SelfHandlingForm):
    forward_id = forms.CharField(widget=forms.HiddenInput())
    internal_ip_address = forms.CharField(label=_("Internal IP Address"),
                                          max_length=64)
    internal_port = forms.IntegerField(label=_("Internal Port"))
    description = forms.CharField(label=_("Description"), required=False,
                                  max_length=255)
    allowed_cidrs = allowed_cidrs_field()
    max_connections = max_connections_field()
    proxy_protocol = proxy_protocol_field()

    def handle(self, request, data):
        try:
            forward = api.forward_update(
                request, data['forward_id'],
                internal_ip_address=data['internal_ip_address'],
                internal_port=data['internal_port'],
                description=data.get('description', ''),
                # The form shows every control: an emptied field clears it.
                allowed_cidrs=cidr_list(data.get('allowed_cidrs')),
                max_connections=data.get('max_connections'),
                proxy_protocol=data.get('proxy_protocol') or 'none',
                nullable=('max_connections',))
        except api.NavigatorError as e:
            return show_api_error(self, request, e,
                                  _('Unable to retarget the port forward.'))
        messages.success(request, _('Port forward %(external)s now goes to '
                                    '%(target)s.') % {
                                        'external': forward.external,
                                        'target': forward.target})
        return forward
