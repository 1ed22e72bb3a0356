"""Django settings for running Debian's openstack-dashboard with the plugin
on loopback, for development and for Navigator's browser tests
(``scripts/horizon start``). Debian's own settings are imported unchanged;
nothing under /etc is edited.

Environment:
  HORIZON_KEYSTONE_URL       Keystone v3 URL (required)
  HORIZON_SECRET_KEY         Django secret key (scripts/horizon makes one per run)
"""

import os

# Enable the plugin exactly as a deployment does, through its one enabled
# file, but from the package's folder instead of Debian's local/enabled.
import navigator_horizon.enabled
import openstack_dashboard.local.enabled

openstack_dashboard.local.enabled.__path__.append(
    os.path.dirname(navigator_horizon.enabled.__file__))

from openstack_dashboard.settings import *  # noqa: E402,F401,F403

OPENSTACK_KEYSTONE_URL = os.environ['HORIZON_KEYSTONE_URL']
OPENSTACK_KEYSTONE_DEFAULT_ROLE = 'member'
SECRET_KEY = os.environ['HORIZON_SECRET_KEY']
ALLOWED_HOSTS = ['127.0.0.1', 'localhost']
DEBUG = False

# Without Nova and Neutron the project overview answers 403; land on the panel.
HORIZON_CONFIG['user_home'] = '/project/port_forwards/'  # noqa: F405

# Plain HTTP on loopback: the session and CSRF cookies cannot be Secure, but
# stay HttpOnly (session) and SameSite.
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
SESSION_COOKIE_HTTPONLY = True
