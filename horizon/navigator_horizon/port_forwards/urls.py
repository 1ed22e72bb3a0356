"""URLs of the Port Forwards panel."""

from django.urls import re_path

from navigator_horizon.port_forwards import views

urlpatterns = [
    re_path(r'^$', views.IndexView.as_view(), name='index'),
    re_path(r'^create/$', views.CreateView.as_view(), name='create'),
    re_path(r'^(?P<forward_id>[^/]+)/retarget/$', views.RetargetView.as_view(),
            name='retarget'),
    re_path(r'^(?P<forward_id>[^/]+)/$', views.DetailView.as_view(),
            name='detail'),
]
