package nmi

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Azure CNI in bridge mode (every pod on the azure0 bridge) is the same ARP-spoofing risk as
// kubenet; transparent mode (routed, the AKS default) is not. The configs are shaped like the
// ones Azure CNI writes to /etc/cni/net.d.
func TestDetectAzureCNIBridgeMode(t *testing.T) {
	conf := func(body string) NetworkFacts {
		return NetworkFacts{CNIConfigs: map[string][]byte{"10-azure.conflist": []byte(body)}}
	}
	for _, c := range []struct {
		name string
		f    NetworkFacts
		want bool
	}{
		{"bridge mode", conf(`{"cniVersion":"0.3.0","name":"azure","plugins":[{"type":"azure-vnet","mode":"bridge","bridge":"azure0","ipam":{"type":"azure-vnet-ipam"}},{"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}`), true},
		{"bridge mode, other case", conf(`{"name":"azure","plugins":[{"type":"azure-vnet","mode":"Bridge","ipam":{"type":"azure-vnet-ipam"}}]}`), true},
		{"bridge mode, single-plugin conf", conf(`{"cniVersion":"0.3.0","name":"azure","type":"azure-vnet","mode":"bridge","bridge":"azure0"}`), true},
		{"transparent mode", conf(`{"cniVersion":"0.3.0","name":"azure","plugins":[{"type":"azure-vnet","mode":"transparent","ipam":{"type":"azure-vnet-ipam"}},{"type":"portmap"}]}`), false},
		{"no mode (transparent is Azure CNI's own default)", conf(`{"name":"azure","plugins":[{"type":"azure-vnet","ipam":{"type":"azure-vnet-ipam"}}]}`), false},
		{"another plugin in bridge mode", conf(`{"name":"x","plugins":[{"type":"macvlan","mode":"bridge"}]}`), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, why := DetectKubenet(c.f)
			if got != c.want {
				t.Fatalf("got %v (%s), want %v", got, why, c.want)
			}
			if got && !strings.Contains(why, "10-azure.conflist") {
				t.Errorf("reason %q does not name the file", why)
			}
		})
	}
}

// The refusal is a typed error naming the file, the risk and both ways out; a routed node passes.
func TestCheckNetworkNamesTheFix(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "10-azure.conflist"), []byte(`{"name":"azure","plugins":[{"type":"azure-vnet","mode":"bridge"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := ReadNetworkFacts(filepath.Join(dir, "no-kubelet-defaults"), dir)
	if err != nil {
		t.Fatal(err)
	}
	err = CheckNetwork(f)
	if !errors.Is(err, ErrSharedBridge) {
		t.Fatalf("got %v, want ErrSharedBridge", err)
	}
	for _, want := range []string{"10-azure.conflist", "bridge mode", "spoof", "transparent mode", "--allow-network-plugin-kubenet", "nmi.allowNetworkPluginKubenet"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if err := CheckNetwork(NetworkFacts{CNIConfigs: map[string][]byte{"10-azure.conflist": []byte(`{"name":"azure","plugins":[{"type":"azure-vnet","mode":"transparent"}]}`)}}); err != nil {
		t.Errorf("transparent mode refused: %v", err)
	}
}
