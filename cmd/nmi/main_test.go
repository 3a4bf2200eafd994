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

// The benchmark/test switches: the redirect is on unless turned off, and the auxiliary servers'
// address must be an IP when given.
func TestRedirectAndAuxListenFlags(t *testing.T) {
	var o options
	fs := pflag.NewFlagSet("nmi", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"--node=n"}); err != nil {
		t.Fatal(err)
	}
	if !o.redirect || o.auxListenAddress != "" {
		t.Fatalf("defaults: redirect=%v aux=%q, want true and all interfaces", o.redirect, o.auxListenAddress)
	}
	if err := fs.Parse([]string{"--redirect=false", "--aux-listen-address=localhost"}); err != nil {
		t.Fatal(err)
	}
	if err := o.validate(); err == nil || !strings.Contains(err.Error(), "--aux-listen-address") {
		t.Fatalf("want an error naming --aux-listen-address, got %v", err)
	}
	if err := fs.Parse([]string{"--aux-listen-address=127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if err := o.validate(); err != nil || o.redirect {
		t.Fatalf("redirect=%v err=%v, want false and no error", o.redirect, err)
	}
}
