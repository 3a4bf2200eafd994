package main

import (
	"fmt"

	"github.com/go-logr/logr"

	"github.com/podidentity/podidentity/internal/iptables"
)

// prepareNode is --prepare-node: the chart's privileged init container (nmi.prepareNode) installs
// the localnet guard with the image's iptables (the backend nmi-entrypoint.sh picked) and then
// turns on route_localnet, which NMI's own container cannot write (/proc/sys is read-only
// there). The DNAT is left to NMI, whose keeper also removes it on uninstall.
func prepareNode(o *options, log logr.Logger) error {
	ipt, err := iptables.New("")
	if err != nil {
		return fmt.Errorf("--prepare-node: %w", err)
	}
	r := iptables.Rules{MetadataIP: o.metadataIP, MetadataPort: o.metadataPort, TargetIP: o.listenAddress, TargetPort: o.port}
	p, err := iptables.PrepareNode(ipt, iptables.ProcSysctl{}, r)
	if err != nil {
		return fmt.Errorf("--prepare-node: %w", err)
	}
	log.Info("--prepare-node: localnet guard in place", "chain", "filter/"+iptables.GuardChain, "changed", p.GuardChanged)
	switch {
	case !p.LocalnetNeeded:
		log.Info("--prepare-node: route_localnet not needed: NMI's DNAT target is not loopback", "nmiListenAddress", o.listenAddress)
	case p.LocalnetChanged:
		log.Info("--prepare-node: turned on net.ipv4.conf.all.route_localnet (it was 0)")
	default:
		log.Info("--prepare-node: net.ipv4.conf.all.route_localnet was already 1")
	}
	return nil
}
