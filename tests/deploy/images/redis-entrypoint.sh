#!/bin/sh
# Protected mode off, as the official image builds it: without a config file Redis would refuse every client but
# loopback, and the clients here come over the container network (the port is not published). Appended, since a
# config file, when given, must come first.
if [ "$1" = redis-server ]; then
    set -- "$@" --protected-mode no
fi
exec "$@"
