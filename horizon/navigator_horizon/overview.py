"""The instance overview's "Port Forwards" section, as the original Navigator
showed forwarded addresses next to an instance's IPs.

Horizon has no extension point inside the overview tab, so this wraps
``OverviewTab`` once at start-up (from the app's ``ready()``): the context
gains ``navigator_forwards`` and the template renders Horizon's own overview
followed by the forwarded addresses. Any failure only leaves the section
out; the instance page itself never breaks because of Navigator.
Set ``NAVIGATOR_INSTANCE_OVERVIEW = False`` to turn it off.
"""

import logging

from django.conf import settings

LOG = logging.getLogger(__name__)

TEMPLATE = 'navigator_horizon/instance_overview.html'


def install():
    if not getattr(settings, 'NAVIGATOR_INSTANCE_OVERVIEW', True):
        return False
    try:
        from openstack_dashboard.dashboards.project.instances import tabs
    except Exception as e:  # Horizon without the instances panel
        LOG.info('instance overview not extended: %s', e)
        return False
    overview = tabs.OverviewTab
    if getattr(overview, '_navigator_wrapped', False):
        return True
    original_get_context_data = overview.get_context_data
    original_template = overview.template_name

    def get_context_data(self, request, **kwargs):
        context = original_get_context_data(self, request, **kwargs)
        context['navigator_original_template'] = original_template
        context['navigator_forwards'] = overview_forwards(
            request, context.get('instance'))
        return context

    overview.get_context_data = get_context_data
    overview.template_name = TEMPLATE
    overview._navigator_wrapped = True
    return True


def overview_forwards(request, server):
    """The instance's forwards for the overview, or None to show nothing."""
    from navigator_horizon import api
    from navigator_horizon import instances
    if server is None:
        return None
    try:
        if not api.is_enabled(request):
            return None
        return instances.forwards_of(request, server, api.forward_list)
    except Exception as e:
        LOG.warning('port forwards of instance %s unavailable: %s',
                    getattr(server, 'id', '?'), e)
        return None
