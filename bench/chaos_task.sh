#!/bin/sh
# The chaos run's work as a program (see chaos_tasks.py): $1 is the task text.
case "$1" in
  raise*) echo "failing on purpose: $1" >&2; exit 3 ;;
  kill*) kill -9 $$ ;;
  hang*) exec sleep 3600 ;;
esac
dots=$(printf '%s' "$1" | tr -cd . | wc -c)
[ "$dots" -gt 0 ] && sleep "$(printf '%d.%02d' $((dots / 20)) $((dots % 20 * 5)))"
echo "did $1"
