# Enables Navigator's Horizon plugin. Copy (or link) this one file into
# openstack_dashboard/local/enabled/ and restart Horizon.
#
# The panel shows only when the user's catalog has a `port-forwarding`
# service; the instance tab and the overview addresses only when it also has
# `compute` (Nova).
PANEL = 'port_forwards'
PANEL_DASHBOARD = 'project'
PANEL_GROUP = 'network'
ADD_PANEL = 'navigator_horizon.port_forwards.panel.PortForwards'
ADD_INSTALLED_APPS = ['navigator_horizon']
EXTRA_TABS = {
    'openstack_dashboard.dashboards.project.instances.tabs.InstanceDetailTabs': (
        'navigator_horizon.port_forwards.tabs.PortForwardsTab',
    ),
}
