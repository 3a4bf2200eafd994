// Package topology builds the sandbox's network: a "cluster" namespace with a bridge, one
// namespace per node attached to it, and one namespace per pod attached to its node.
//
// Addresses come from 198.18.0.0/15, which is reserved for test networks:
//
//	198.18.0.1/24       bridge br0 in the cluster namespace
//	198.18.0.(10+i)/24  eth0 of node i
//	198.18.(i+1).0/24   pod range of node i; 198.18.(i+1).1 is the node's pod bridge cbr0
//	169.254.169.254/32  on lo of every node: that node's (emulated) IMDS
//
// Nothing is connected to the machine's own namespace and no namespace has a default route out,
// so no packet for 169.254.169.254 or a test address can leave the sandbox.
package topology

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/podidentity/podidentity/internal/sandbox/netns"
)

// MetadataIP is IMDS's address, local on every node namespace.
const MetadataIP = "169.254.169.254"

// Network is a built topology. Pods are added and removed while it runs.
type Network struct {
	// Prefix starts every namespace name of this network.
	Prefix  string
	Cluster string
	Nodes   []*Node
}

// Node is one node namespace and its pod address pool.
type Node struct {
	Index int
	// NS is the node's namespace name.
	NS string
	// IP is the node's address on the cluster bridge.
	IP netip.Addr
	// PodGateway is the node's address on its pod bridge (pods' default route).
	PodGateway netip.Addr
	// PodCIDR is the node's pod range.
	PodCIDR netip.Prefix

	mu   sync.Mutex
	used map[netip.Addr]bool
	seq  int
}

// ErrNoAddress means a node's pod range is exhausted.
var ErrNoAddress = errors.New("no free pod address on this node")

// Build creates the cluster namespace and n node namespaces named <prefix>cluster and
// <prefix>node<i>. On error, what was made so far is removed.
func Build(ctx context.Context, prefix string, n int) (_ *Network, err error) {
	if n < 1 || n > 200 {
		return nil, fmt.Errorf("node count %d out of range: use 1..200", n)
	}
	nw := &Network{Prefix: prefix, Cluster: prefix + "cluster"}
	defer func() {
		if err != nil {
			_ = nw.Teardown(context.Background())
		}
	}()
	if err := netns.Add(ctx, nw.Cluster); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"-n", nw.Cluster, "link", "add", "br0", "type", "bridge"},
		{"-n", nw.Cluster, "addr", "add", "198.18.0.1/24", "dev", "br0"},
		{"-n", nw.Cluster, "link", "set", "br0", "up"},
	}
	if err := run(ctx, steps); err != nil {
		return nil, err
	}
	for i := 0; i < n; i++ {
		node := &Node{
			Index:      i,
			NS:         fmt.Sprintf("%snode%d", prefix, i),
			IP:         netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}),
			PodGateway: netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 1}),
			PodCIDR:    netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 0}), 24),
			used:       map[netip.Addr]bool{},
		}
		nw.Nodes = append(nw.Nodes, node)
		if err := netns.Add(ctx, node.NS); err != nil {
			return nil, err
		}
		up := fmt.Sprintf("n%d", i)
		steps := [][]string{
			// Created inside the cluster namespace with its peer placed straight into the node's.
			{"-n", nw.Cluster, "link", "add", up, "type", "veth", "peer", "name", "eth0", "netns", node.NS},
			{"-n", nw.Cluster, "link", "set", up, "master", "br0", "up"},
			{"-n", node.NS, "addr", "add", node.IP.String() + "/24", "dev", "eth0"},
			{"-n", node.NS, "link", "set", "eth0", "up"},
			{"-n", node.NS, "link", "add", "cbr0", "type", "bridge"},
			{"-n", node.NS, "addr", "add", node.PodGateway.String() + "/24", "dev", "cbr0"},
			{"-n", node.NS, "link", "set", "cbr0", "up"},
			{"-n", node.NS, "addr", "add", MetadataIP + "/32", "dev", "lo"},
		}
		if err := run(ctx, steps); err != nil {
			return nil, err
		}
		// Routing between pod ranges of different nodes, and DNAT of pod traffic to NMI's
		// loopback listener, as kube-proxy configures a real node (route_localnet=1).
		for key, val := range map[string]string{
			"net.ipv4.ip_forward":              "1",
			"net.ipv4.conf.all.route_localnet": "1",
			"net.ipv4.conf.all.rp_filter":      "0",
			"net.ipv4.conf.default.rp_filter":  "0",
		} {
			if err := netns.Sysctl(node.NS, key, val); err != nil {
				return nil, err
			}
		}
	}
	for _, a := range nw.Nodes {
		for _, b := range nw.Nodes {
			if a == b {
				continue
			}
			if _, err := netns.IP(ctx, "-n", a.NS, "route", "add", b.PodCIDR.String(), "via", b.IP.String()); err != nil {
				return nil, err
			}
		}
	}
	return nw, nil
}

func run(ctx context.Context, steps [][]string) error {
	for _, s := range steps {
		if _, err := netns.IP(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// Pod is a pod's network: its namespace and address.
type Pod struct {
	NS   string
	IP   netip.Addr
	Node *Node
	veth string
}

// AllocateIP reserves an address in the node's pod range: want if given and free, otherwise the
// lowest free one, as a simple IPAM would (so a deleted pod's address is the next one reused).
func (n *Node) AllocateIP(want netip.Addr) (netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if want.IsValid() {
		if !n.PodCIDR.Contains(want) || want == n.PodGateway || want.As4()[3] == 0 || want.As4()[3] == 255 {
			return netip.Addr{}, fmt.Errorf("requested pod address %s is not usable in %s on node %d", want, n.PodCIDR, n.Index)
		}
		if n.used[want] {
			return netip.Addr{}, fmt.Errorf("requested pod address %s is in use on node %d", want, n.Index)
		}
		n.used[want] = true
		return want, nil
	}
	b := n.PodCIDR.Addr().As4()
	for last := 2; last < 255; last++ {
		b[3] = byte(last)
		a := netip.AddrFrom4(b)
		if !n.used[a] {
			n.used[a] = true
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: %s is full on node %d", ErrNoAddress, n.PodCIDR, n.Index)
}

// ReleaseIP returns an address to the pool.
func (n *Node) ReleaseIP(a netip.Addr) {
	n.mu.Lock()
	delete(n.used, a)
	n.mu.Unlock()
}

// AddPod creates namespace nsName, a veth from the node's pod bridge to the pod's eth0, the
// address ip and a default route via the node. The address must come from AllocateIP.
func (n *Node) AddPod(ctx context.Context, nsName string, ip netip.Addr) (_ *Pod, err error) {
	n.mu.Lock()
	n.seq++
	veth := fmt.Sprintf("vp%d", n.seq)
	n.mu.Unlock()
	p := &Pod{NS: nsName, IP: ip, Node: n, veth: veth}
	defer func() {
		if err != nil {
			_ = p.remove(context.Background())
		}
	}()
	if err := netns.Add(ctx, nsName); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"-n", n.NS, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", nsName},
		{"-n", n.NS, "link", "set", veth, "master", "cbr0", "up"},
		{"-n", nsName, "addr", "add", ip.String() + "/24", "dev", "eth0"},
		{"-n", nsName, "link", "set", "eth0", "up"},
		{"-n", nsName, "route", "add", "default", "via", n.PodGateway.String()},
	}
	if err := run(ctx, steps); err != nil {
		return nil, err
	}
	return p, nil
}

// Remove deletes the pod's namespace (which removes both ends of its veth) and frees its address.
func (p *Pod) Remove(ctx context.Context) error {
	err := p.remove(ctx)
	p.Node.ReleaseIP(p.IP)
	return err
}

func (p *Pod) remove(ctx context.Context) error {
	err := netns.Delete(ctx, p.NS)
	// Deleting the pod namespace destroys the veth pair; this only matters if the namespace was
	// never created but the link was.
	if _, lerr := netns.IP(ctx, "-n", p.Node.NS, "link", "show", p.veth); lerr == nil {
		_, _ = netns.IP(ctx, "-n", p.Node.NS, "link", "delete", p.veth)
	}
	return err
}

// Teardown deletes every namespace whose name starts with the network's prefix (pods, nodes,
// cluster, and any others the caller made with that prefix), killing what runs inside.
func (nw *Network) Teardown(ctx context.Context) error {
	return RemoveAll(ctx, nw.Prefix)
}

// RemoveAll deletes every namespace named with prefix.
func RemoveAll(ctx context.Context, prefix string) error {
	names, err := netns.List(prefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		if err := netns.Delete(ctx, name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
