"""Consume payment orders with manual acks; stops after --count orders (0: run forever).

python worker.py [--url amqp://guest:guest@localhost:5672/%2F] [--count 10]
"""

import argparse
import json

import pika


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@localhost:5672/%2F")
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    channel.queue_declare(queue="payment_queue", durable=True)
    channel.basic_qos(prefetch_count=10)
    handled = 0

    def handle(ch, method, properties, body):
        nonlocal handled
        order = json.loads(body)
        print(f"charged order {order['order_id']}", flush=True)
        ch.basic_ack(delivery_tag=method.delivery_tag)  # only now is the order done
        handled += 1
        if handled == args.count:
            ch.stop_consuming()

    channel.basic_consume(queue="payment_queue", on_message_callback=handle)
    channel.start_consuming()
    connection.close()


if __name__ == "__main__":
    main()
