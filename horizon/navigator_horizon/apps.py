"""The Django app: templates, and the instance-overview hook at start-up."""

from django.apps import AppConfig


class NavigatorHorizonConfig(AppConfig):
    name = 'navigator_horizon'
    verbose_name = 'Navigator port forwards'

    def ready(self):
        # Installed here rather than through HORIZON_CONFIG['customization_module']
        # so that enabling the plugin stays one file and a deployer's own
        # customization module keeps working.
        from navigator_horizon import overview
        overview.install()
