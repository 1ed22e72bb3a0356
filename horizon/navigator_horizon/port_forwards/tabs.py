"""The Port Forwards tab of the instance detail page (Horizon's EXTRA_TABS)."""

from django.utils.translation import gettext_lazy as _
from horizon import exceptions
from horizon import tabs

from navigator_horizon import api
from navigator_horizon import instances
from navigator_horizon.port_forwards import tables as pf_tables


class PortForwardsTab(tabs.TableTab):
    name = _("Port Forwards")
    slug = 'port_forwards'
    table_classes = (pf_tables.InstancePortForwardsTable,)
    template_name = 'horizon/common/_detail_table.html'
    preload = False

    def allowed(self, request):
        try:
            return api.is_enabled(request)
        except Exception:
            return False

    def get_instance_port_forwards_data(self):
        server = self.tab_group.kwargs['instance']
        try:
            forwards = instances.forwards_of(self.request, server,
                                             api.forward_list)
        except Exception:
            exceptions.handle(self.request,
                              _('Unable to retrieve port forwards.'))
            return []
        return instances.name_instances(self.request, forwards, [server])
