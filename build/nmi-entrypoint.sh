#!/bin/sh
# Picks the iptables backend the node already uses, then runs NMI with it first on PATH.
# The backend with more rules is the node's: kube-proxy and the CNI have written there long before
# NMI starts. On a tie (an empty node) nf_tables wins, the default of current distributions.
# PODIDENTITY_IPTABLES_MODE=legacy|nft skips the detection.
# With --cleanup-iptables (NMI's rules removed after an uninstall) both backends are cleaned: the
# rules may be in either, e.g. after the node switched backends.
set -eu
for arg in "$@"; do
  if [ "$arg" = "--cleanup-iptables" ]; then
    ok=0
    for m in legacy nft; do
      if PATH="/opt/iptables/$m:$PATH" /nmi "$@"; then ok=1; else echo "nmi-entrypoint: --cleanup-iptables with the $m backend failed" >&2; fi
    done
    [ "$ok" = 1 ] || exit 1
    exit 0
  fi
done
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
