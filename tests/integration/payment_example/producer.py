"""Publish payment orders to the durable `payment_queue`, as a pika user writes it.

python producer.py [--url amqp://guest:guest@localhost:5672/%2F] [--count 10]
"""

import argparse
import json

import pika


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@localhost:5672/%2F")
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    channel.queue_declare(queue="payment_queue", durable=True)
    channel.confirm_delivery()  # basic_publish returns once the broker has the order
    for number in range(args.count):
        order = {"order_id": number, "amount_cents": 1000 + number, "currency": "EUR"}
        channel.basic_publish(
            exchange="",
            routing_key="payment_queue",
            body=json.dumps(order).encode(),
            properties=pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json"
            ),
        )
        print(f"sent order {number}", flush=True)
    connection.close()


if __name__ == "__main__":
    main()
