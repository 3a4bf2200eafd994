package nmi

import (
	"encoding/json"
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

// DetectKubenet reports whether pods share an L2 bridge the way kubenet sets them up (where a pod
// with NET_RAW can ARP-spoof another pod's IP and take its tokens), and why. Upstream looked for
// one substring in one file, which kubenet + Calico (kubelet says --network-plugin=cni) evaded.
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
			if sub, _ := p.IPAM["subnet"].(string); p.IPAM["type"] == "host-local" && sub == "usePodCidr" {
				return true, fmt.Sprintf("CNI config %s allocates from the node's pod CIDR on a bridge (kubenet with a policy plugin)", name)
			}
		}
	}
	return false, ""
}
