#!/bin/sh
# Picks the iptables backend the node already uses, then runs NMI with it first on PATH.
# The backend with more rules is the node's: kube-proxy and the CNI have written there long before
# NMI starts. On a tie (an empty node) nf_tables wins, the default of current distributions.
# PODIDENTITY_IPTABLES_MODE=legacy|nft skips the detection.
set -eu
mode="${PODIDENTITY_IPTABLES_MODE:-}"
if [ -z "$mode" ]; then
  legacy=$( (xtables-legacy-multi iptables-save 2>/dev/null; xtables-legacy-multi ip6tables-save 2>/dev/null) | grep -c '^-' || true)
  nft=$( (xtables-nft-multi iptables-save 2>/dev/null; xtables-nft-multi ip6tables-save 2>/dev/null) | grep -c '^-' || true)
  if [ "${legacy:-0}" -gt "${nft:-0}" ]; then mode=legacy; else mode=nft; fi
fi
case "$mode" in
  legacy|nft) ;;
  *) echo "nmi-entrypoint: PODIDENTITY_IPTABLES_MODE=$mode: use legacy or nft" >&2; exit 2 ;;
esac
echo "nmi-entrypoint: using the iptables $mode backend" >&2
PATH="/opt/iptables/$mode:$PATH"
export PATH
exec /nmi "$@"
