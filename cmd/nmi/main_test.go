package main

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// Every upstream NMI flag name parses.
func TestUpstreamFlags(t *testing.T) {
	var o options
	fs := pflag.NewFlagSet("nmi", pflag.ContinueOnError)
	o.AddFlags(fs)
	args := []string{"--version=false", "--nmi-listen-address=0.0.0.0", "--nmi-port=2579", "--metadata-ip=169.254.169.254",
		"--metadata-port=80", "--node=n1", "--ipt-update-interval-sec=60", "--forceNamespaced=true", "--MICNamespace=kube-system",
		"--http-probe-port=8085", "--retry-attempts-for-created=16", "--retry-attempts-for-assigned=4",
		"--find-identity-retry-interval=5", "--enableProfile=false", "--enableScaleFeatures=true",
		"--block-instance-metadata=true", "--metadata-header-required=true", "--prometheus-port=9090",
		"--operation-mode=Managed", "--allow-network-plugin-kubenet=false", "--kubelet-config=/etc/default/kubelet",
		"--set-retry-after-header=true", "--enable-conntrack-deletion=true", "--log-format=json"}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	c := o.config()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.OperationMode != "managed" || !c.ForceNamespaced || c.FindIdentityRetryInterval.Seconds() != 5 || !c.BlockInstanceMetadata {
		t.Errorf("config not taken from flags: %+v", c)
	}
}

func TestManagedNeedsNamespaced(t *testing.T) {
	t.Setenv("FORCENAMESPACED", "")
	var o options
	fs := pflag.NewFlagSet("nmi", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"--node=n", "--operation-mode=managed"}); err != nil {
		t.Fatal(err)
	}
	c := o.config()
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--forceNamespaced") {
		t.Fatalf("want an error naming --forceNamespaced, got %v", err)
	}
	t.Setenv("FORCENAMESPACED", "true")
	c = o.config()
	if err := c.Validate(); err != nil {
		t.Fatalf("FORCENAMESPACED=true should satisfy managed mode: %v", err)
	}
}
