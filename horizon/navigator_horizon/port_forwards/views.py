"""Views of the Port Forwards panel: the table, a forward's detail page
(with its usage) and the two modal forms."""

from django.urls import reverse
from django.urls import reverse_lazy
from django.utils.translation import gettext_lazy as _
from horizon import exceptions
from horizon import forms
from horizon import tables
from horizon import views

from navigator_horizon import api
from navigator_horizon import instances
from navigator_horizon.port_forwards import forms as pf_forms
from navigator_horizon.port_forwards import tables as pf_tables

INDEX_URL = 'horizon:project:port_forwards:index'


class IndexView(tables.DataTableView):
    table_class = pf_tables.PortForwardsTable
    page_title = _("Port Forwards")
    template_name = 'navigator_horizon/port_forwards/index.html'

    def get_data(self):
        try:
            forwards = api.forward_list(self.request)
        except Exception:
            exceptions.handle(self.request,
                              _('Unable to retrieve port forwards.'))
            return []
        instances.name_instances(self.request, forwards)
        return forwards


class CreateView(forms.ModalFormView):
    form_class = pf_forms.CreateForm
    form_id = 'create_port_forward_form'
    modal_id = 'create_port_forward_modal'
    template_name = 'navigator_horizon/port_forwards/create.html'
    submit_label = _("Create")
    submit_url = reverse_lazy('horizon:project:port_forwards:create')
    success_url = reverse_lazy(INDEX_URL)
    page_title = _("Create Port Forward")


class RetargetView(forms.ModalFormView):
    form_class = pf_forms.RetargetForm
    form_id = 'retarget_port_forward_form'
    modal_id = 'retarget_port_forward_modal'
    template_name = 'navigator_horizon/port_forwards/retarget.html'
    submit_label = _("Retarget")
    success_url = reverse_lazy(INDEX_URL)
    page_title = _("Retarget Port Forward")

    def get_object(self):
        if not hasattr(self, '_object'):
            try:
                self._object = api.forward_get(self.request,
                                               self.kwargs['forward_id'])
            except Exception:
                exceptions.handle(self.request,
                                  _('Unable to retrieve the port forward.'),
                                  redirect=reverse(INDEX_URL))
        return self._object

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context['submit_url'] = reverse(
            'horizon:project:port_forwards:retarget',
            args=(self.kwargs['forward_id'],))
        context['forward'] = self.get_object()
        return context

    def get_initial(self):
        forward = self.get_object()
        return {'forward_id': forward.id,
                'internal_ip_address': forward.internal_ip_address,
                'internal_port': forward.internal_port,
                'description': forward.description,
                'allowed_cidrs': ', '.join(forward.allowed_cidrs),
                'max_connections': forward.max_connections,
                'proxy_protocol': forward.proxy_protocol}


class DetailView(views.HorizonTemplateView):
    """One forward: its fields and what its proxy counted for it."""
    template_name = 'navigator_horizon/port_forwards/detail.html'
    page_title = _("Port Forward {{ forward.external }}")

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        try:
            forward = api.forward_get(self.request, self.kwargs['forward_id'])
        except Exception:
            exceptions.handle(self.request,
                              _('Unable to retrieve the port forward.'),
                              redirect=reverse(INDEX_URL))
        instances.name_instances(self.request, [forward])
        context['forward'] = forward
        usage = forward.usage
        context['usage'] = usage and dict(
            usage,
            bytes_in_display=api.human_bytes(usage.get('bytes_in')),
            bytes_out_display=api.human_bytes(usage.get('bytes_out')))
        context['url'] = reverse(INDEX_URL)
        return context
