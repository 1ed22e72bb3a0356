"""Publishes notifications the way Nova does, for crates/server/tests/nova.rs.

Run with Debian's /usr/bin/python3, which has python3-oslo.messaging:

  nova_notifier.py URL EXCHANGE

reads one JSON object per line on stdin and publishes it on EXCHANGE (what
Nova's control_exchange would be), then prints "ok" on its own line:

  {"topic": T, "driver": "messagingv2" | "messaging", "publisher_id": P,
   "event_type": E, "payload": {...}}
      through oslo.messaging's Notifier, as Nova's notifier does (messagingv2
      wraps the message in the 2.0 envelope, messaging sends it bare)
  {"raw": TEXT, "routing_key": K}
      TEXT as the body of one message with routing key K (kombu, no oslo), for
      bodies no notifier would write
"""

import json
import sys

import kombu
from oslo_config import cfg
import oslo_messaging as messaging


def main(url, exchange):
    conf = cfg.CONF
    conf([], project='navigator-test')
    messaging.set_transport_defaults(exchange)
    transport = messaging.get_notification_transport(conf, url=url)
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        if 'raw' in message:
            with kombu.Connection(url.replace('rabbit://', 'amqp://', 1)) as connection:
                producer = connection.Producer()
                producer.publish(
                    message['raw'].encode(), exchange=exchange,
                    routing_key=message['routing_key'],
                    content_type='application/json', content_encoding='utf-8')
        else:
            notifier = messaging.Notifier(
                transport, publisher_id=message['publisher_id'],
                driver=message['driver'], topics=[message['topic']])
            notifier.info({}, message['event_type'], message['payload'])
        print('ok', flush=True)
    transport.cleanup()


if __name__ == '__main__':
    main(*sys.argv[1:])
