"""The port-forward table: columns, row status polling and actions.

The same table serves the panel and the instance tab (``InstancePortForwardsTable``).
"""

from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext_lazy
from horizon import exceptions
from horizon import tables

from navigator_horizon import api

STATUS_CHOICES = (
    ('ACTIVE', True),
    ('ERROR', False),
    ('PENDING', None),
    ('DELETING', None),
)
STATUS_DISPLAY = (
    ('ACTIVE', _('Active')),
    ('ERROR', _('Error')),
    ('PENDING', _('Pending')),
    ('DELETING', _('Deleting')),
)


class CreatePortForward(tables.LinkAction):
    """Quota-aware, as Horizon's own create buttons (floating IPs,
    networks): at the project's forwards or ports limit it stays visible but
    disabled, saying "(Quota exceeded)", with the use in its tooltip."""

    name = 'create'
    verbose_name = _("Create Port Forward")
    url = 'horizon:project:port_forwards:create'
    classes = ('ajax-modal',)
    icon = 'plus'

    def allowed(self, request, datum=None):
        try:
            details = api.quota_details(request)
        except Exception:
            # No quota to judge by (older Navigator, policy): the API still
            # refuses a create over the quota with its own message.
            details = None
        classes = [c for c in self.classes if c != 'disabled']
        self.verbose_name = _("Create Port Forward")
        self.attrs.pop('title', None)
        if details is not None:
            self.attrs['title'] = _(
                'Quota: %(f_used)s of %(f_limit)s forwards, '
                '%(p_used)s of %(p_limit)s ports used') % {
                'f_used': details['forwards']['used'],
                'f_limit': _limit_text(details['forwards']['limit']),
                'p_used': details['ports']['used'],
                'p_limit': _limit_text(details['ports']['limit'])}
            if api.quota_full(details):
                classes.append('disabled')
                self.verbose_name = _("Create Port Forward (Quota exceeded)")
        self.classes = tuple(classes)
        return True


def _limit_text(limit):
    return _('unlimited') if limit < 0 else limit


class RetargetPortForward(tables.LinkAction):
    name = 'retarget'
    verbose_name = _("Retarget")
    url = 'horizon:project:port_forwards:retarget'
    classes = ('ajax-modal',)
    icon = 'pencil'

    def allowed(self, request, forward=None):
        return forward is None or forward.status != 'DELETING'


class DeletePortForward(tables.DeleteAction):
    name = 'delete'

    @staticmethod
    def action_present(count):
        return ngettext_lazy("Delete Port Forward", "Delete Port Forwards",
                             count)

    @staticmethod
    def action_past(count):
        return ngettext_lazy("Deleted Port Forward", "Deleted Port Forwards",
                             count)

    def delete(self, request, obj_id):
        api.forward_delete(request, obj_id)


class UpdateRow(tables.Row):
    """Polls rows that are not settled yet, so PENDING turns ACTIVE by itself."""

    ajax = True

    def get_data(self, request, forward_id):
        try:
            return api.forward_get(request, forward_id)
        except api.NotFound:
            # Deleted meanwhile: Horizon removes the row on a 404 from here.
            raise exceptions.NotFound()


class StatusColumn(tables.Column):
    """The status, followed by Navigator's reason when there is one.

    Polling compares the raw ``status`` with ``status_choices``; only the
    rendered cell carries the reason.
    """

    def get_data(self, datum):
        text = super().get_data(datum)
        if getattr(datum, 'status_reason', None):
            return format_html('{} <span class="status-reason">({})</span>',
                               text, datum.status_reason)
        return text


def instance_link(forward):
    # Only instances Nova named (so Nova is there and the user sees them).
    if not (forward.instance_id and forward.instance_name):
        return None
    try:
        return reverse('horizon:project:instances:detail',
                       args=(forward.instance_id,))
    except Exception:
        return None


def instance_display(forward):
    return forward.instance_name or forward.instance_id or '-'


class PortForwardsTable(tables.DataTable):
    external = tables.Column('external', verbose_name=_("External Address"),
                             link='horizon:project:port_forwards:detail')
    target = tables.Column('target', verbose_name=_("Target"))
    protocol = tables.Column('protocol', verbose_name=_("Protocol"),
                             filters=(str.upper,))
    instance = tables.Column(instance_display, verbose_name=_("Instance"),
                             link=instance_link)
    status = StatusColumn('status', verbose_name=_("Status"), status=True,
                          status_choices=STATUS_CHOICES,
                          display_choices=STATUS_DISPLAY)
    proxy = tables.Column('proxy', verbose_name=_("Proxy"))
    controls = tables.Column('controls', verbose_name=_("Controls"))
    description = tables.Column('description', verbose_name=_("Description"))

    def get_object_display(self, forward):
        return forward.external

    def get_object_id(self, forward):
        return forward.id

    class Meta(object):
        name = 'port_forwards'
        verbose_name = _("Port Forwards")
        status_columns = ('status',)
        row_class = UpdateRow
        table_actions = (CreatePortForward, DeletePortForward)
        row_actions = (RetargetPortForward, DeletePortForward)


class InstancePortForwardsTable(PortForwardsTable):
    """The instance tab's table. Horizon's instance detail page is a plain
    TabView that does not accept table POSTs, so only link actions live here;
    deleting is done in the panel."""

    class Meta(object):
        name = 'instance_port_forwards'
        verbose_name = _("Port Forwards")
        status_columns = ('status',)
        row_class = UpdateRow
        multi_select = False
        table_actions = ()
        row_actions = (RetargetPortForward,)
