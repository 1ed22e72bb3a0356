"""The panel's registration in Project > Network."""

from django.utils.translation import gettext_lazy as _
import horizon


class PortForwards(horizon.Panel):
    name = _("Port Forwards")
    slug = 'port_forwards'
    # Shown only when the user's catalog has Navigator.
    permissions = ('openstack.services.port-forwarding',)
