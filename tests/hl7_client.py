"""Sends HL7 messages over MLLP with the `hl7` package's client and prints what came back.

argv: host port file. The file holds JSON: a list of connections, each a list of messages as hex.
Prints JSON: for each message {"msa1", "msa2", "text", "hex"} read by `hl7.parse`, or
{"closed": true} when the server closed the connection instead of answering.
"""
import json
import sys

import hl7
from hl7.client import MLLPClient

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


def charset_of(ack):
    msh = ack.split(CR, 1)[0].split(b"|")
    name = msh[17].decode("ascii", "replace") if len(msh) > 17 else ""
    return "gb18030" if "GB" in name.upper() else "utf-8"


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(path) as f:
        connections = json.load(f)
    results = []
    for messages in connections:
        with MLLPClient(host, port) as client:
            for m in messages:
                data = bytes.fromhex(m)
                if len(data) < 60000:
                    reply = client.send_message(data)
                else:
                    client.socket.sendall(SB + data + EB + CR)
                    reply = client.socket.recv(4096)
                while reply and not reply.endswith(EB + CR):
                    more = client.socket.recv(4096)
                    if not more:
                        break
                    reply += more
                if not reply:
                    results.append({"closed": True})
                    break
                assert reply.startswith(SB) and reply.endswith(EB + CR), reply
                ack = reply[1:-2]
                text = ack.decode(charset_of(ack))
                msg = hl7.parse(text)
                msa = msg.segment("MSA")
                results.append(
                    {"msa1": str(msa[1]), "msa2": str(msa[2]), "text": text, "hex": ack.hex()}
                )
    print(json.dumps(results))


main()
