package nmi

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// NetworkFacts are what the kubenet check looks at on the node.
type NetworkFacts struct {
	// KubeletArgs is the content of the kubelet defaults file (--kubelet-config).
	KubeletArgs string
	// CNIConfigs are the files of /etc/cni/net.d by name.
	CNIConfigs map[string][]byte
}

// ReadNetworkFacts reads the kubelet defaults file and the CNI configuration directory; missing
// files are not errors (the node may use neither).
func ReadNetworkFacts(kubeletConfig, cniDir string) (NetworkFacts, error) {
	f := NetworkFacts{CNIConfigs: map[string][]byte{}}
	if b, err := os.ReadFile(kubeletConfig); err == nil {
		f.KubeletArgs = string(b)
	} else if !os.IsNotExist(err) {
		return f, fmt.Errorf("reading kubelet config %s for the kubenet check: %w", kubeletConfig, err)
	}
	entries, _ := os.ReadDir(cniDir)
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(cniDir, e.Name())); err == nil {
			f.CNIConfigs[e.Name()] = b
		}
	}
	return f, nil
}

// ErrSharedBridge means the node's pods share an L2 bridge (see DetectKubenet).
var ErrSharedBridge = errors.New("pods on this node share an L2 bridge")

// CheckNetwork refuses a node whose pods share an L2 bridge, with the fix in the message.
func CheckNetwork(f NetworkFacts) error {
	if yes, why := DetectKubenet(f); yes {
		return fmt.Errorf("%w (%s): a pod with NET_RAW can spoof another pod's IP (ARP) and take its tokens; "+
			"use a CNI without a shared bridge (Azure CNI in transparent mode, the default of current AKS; Azure CNI Overlay; Cilium), "+
			"or accept the risk with --allow-network-plugin-kubenet (chart: nmi.allowNetworkPluginKubenet=true)", ErrSharedBridge, why)
	}
	return nil
}

// DetectKubenet reports whether pods share an L2 bridge the way kubenet or Azure CNI in bridge
// mode sets them up (where a pod with NET_RAW can ARP-spoof another pod's IP and take its
// tokens), and why. Upstream looked for one substring in one file, which kubenet + Calico
// (kubelet says --network-plugin=cni) evaded, and did not know Azure CNI's bridge mode.
func DetectKubenet(f NetworkFacts) (bool, string) {
	for _, arg := range strings.Fields(strings.NewReplacer("\"", " ", "'", " ").Replace(f.KubeletArgs)) {
		if arg == "--network-plugin=kubenet" {
			return true, "the kubelet runs with --network-plugin=kubenet"
		}
	}
	for name, b := range f.CNIConfigs {
		var conf struct {
			Name    string            `json:"name"`
			Type    string            `json:"type"`
			Bridge  string            `json:"bridge"`
			IPAM    map[string]any    `json:"ipam"`
			Plugins []json.RawMessage `json:"plugins"`
		}
		if json.Unmarshal(b, &conf) != nil {
			continue
		}
		confs := []json.RawMessage{b}
		confs = append(confs, conf.Plugins...)
		for _, raw := range confs {
			var p struct {
				Type   string         `json:"type"`
				Mode   string         `json:"mode"`
				Bridge string         `json:"bridge"`
				IPAM   map[string]any `json:"ipam"`
			}
			if json.Unmarshal(raw, &p) != nil {
				continue
			}
			// kubenet's bridge is cbr0; Calico in policy-only mode on kubenet keeps host-local
			// IPAM over the node's pod CIDR ("usePodCidr").
			if p.Type == "bridge" && (p.Bridge == "cbr0" || strings.EqualFold(conf.Name, "kubenet")) {
				return true, fmt.Sprintf("CNI config %s uses kubenet's bridge", name)
			}
			// Azure CNI's bridge mode puts every pod on the azure0 bridge; transparent mode
			// (routed, one veth per pod, the AKS default) does not.
			if p.Type == "azure-vnet" && strings.EqualFold(p.Mode, "bridge") {
				return true, fmt.Sprintf("CNI config %s runs Azure CNI (azure-vnet) in bridge mode", name)
			}
			if sub, _ := p.IPAM["subnet"].(string); p.IPAM["type"] == "host-local" && sub == "usePodCidr" {
				return true, fmt.Sprintf("CNI config %s allocates from the node's pod CIDR on a bridge (kubenet with a policy plugin)", name)
			}
		}
	}
	return false, ""
}
