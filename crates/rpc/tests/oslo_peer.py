"""A Python oslo.messaging peer for crates/rpc/tests/amqp.rs.

Run with Debian's /usr/bin/python3, which has python3-oslo.messaging:

  oslo_peer.py call URL TOPIC SERVER METHOD [JSON_ARGS]
      calls METHOD on TOPIC.SERVER and prints {"result": ...} or
      {"error": CLASS_NAME, "message": ...} as one JSON line
  oslo_peer.py serve URL TOPIC SERVER
      serves get_state (returns a fixed state) and fail (raises ValueError)
      on TOPIC.SERVER, prints READY, and stops when stdin closes
"""

import json
import sys

from oslo_config import cfg
import oslo_messaging as messaging

EXCHANGE = 'navigator'


def transport(url):
    # The global CONF: oslo registers some of its options (metrics) only there.
    conf = cfg.CONF
    conf([], project='navigator-test')
    messaging.set_transport_defaults(EXCHANGE)
    return messaging.get_rpc_transport(conf, url=url)


def call(url, topic, server, method, args='{}'):
    target = messaging.Target(topic=topic, server=server, exchange=EXCHANGE)
    client = messaging.RPCClient(transport(url), target, timeout=20)
    try:
        print(json.dumps({'result': client.call({}, method, **json.loads(args))}))
    except Exception as e:  # reported to the Rust test, which judges it
        print(json.dumps({'error': type(e).__name__, 'message': str(e)}))


class Endpoint:
    def get_state(self, ctxt):
        return {'host': 'python-peer', 'backend': 'python', 'external_addresses': [],
                'port_range': '20000-20010', 'generation': 7, 'forwards': []}

    def fail(self, ctxt):
        raise ValueError('python says no')


def serve(url, topic, server):
    target = messaging.Target(topic=topic, server=server, exchange=EXCHANGE)
    rpc = messaging.get_rpc_server(transport(url), target, [Endpoint()],
                                   executor='threading')
    rpc.start()
    print('READY', flush=True)
    sys.stdin.read()
    rpc.stop()
    rpc.wait()


if __name__ == '__main__':
    {'call': call, 'serve': serve}[sys.argv[1]](*sys.argv[2:])
