// Command azure-emulator serves an offline Azure (ARM, Azure AD, per-VM IMDS) for podidentity's
// sandbox, tests and benchmarks. See docs/emulator.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/version"
)

type options struct {
	config     string
	caFile     string
	armAddr    string
	aadAddr    string
	adminAddr  string
	imds       []string
	imdsAll    bool
	fast       bool
	throttling bool
	issuerCAs  []string
	armAuds    []string
	version    bool
}

func (o *options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.config, "config", "examples/emulator/world.yaml", "world file (YAML or JSON) describing tenants, VMs, scale sets, identities and principals")
	fs.StringVar(&o.caFile, "ca-file", "", "where to write the CA certificate that signs the HTTPS endpoints (default: <temp dir>/azure-emulator-ca.pem)")
	fs.StringVar(&o.armAddr, "arm-addr", "", "ARM listen address on loopback (overrides the world file; default 127.0.0.1:<free port>)")
	fs.StringVar(&o.aadAddr, "aad-addr", "", "Azure AD listen address on loopback (overrides the world file)")
	fs.StringVar(&o.adminAddr, "admin-addr", "", "admin API listen address on loopback (overrides the world file)")
	fs.StringArrayVar(&o.imds, "imds", nil, "serve one host's IMDS: HOST=ADDR (HOST: VM name, vmss/instance, computer name or resource ID; ADDR: loopback host:port); repeatable")
	fs.BoolVar(&o.imdsAll, "imds-all", true, "serve an IMDS endpoint on a free loopback port for every VM and VMSS instance not named by --imds")
	fs.BoolVar(&o.fast, "fast", false, "use the fast test timings instead of the world file's")
	fs.BoolVar(&o.throttling, "throttling", false, "enable ARM throttling with the documented limits when the world file sets none")
	fs.StringArrayVar(&o.issuerCAs, "issuer-ca", nil, "PEM file of a CA trusted when Azure AD fetches an external token issuer's discovery document and JWKS (e.g. a kube-apiserver's CA); repeatable, added to the world file's issuerCAs")
	fs.BoolVar(&o.version, "version", false, "print the version, commit and build date, then exit")
	fs.StringArrayVar(&o.armAuds, "arm-audience", nil, "a further token audience ARM accepts, e.g. an environment file's tokenAudience; repeatable, added to the world file's armAudiences")
}

func (o *options) validate() error {
	if o.config == "" {
		return errors.New("--config is empty: pass a world file such as examples/emulator/world.yaml")
	}
	for _, m := range o.imds {
		if h, a, ok := strings.Cut(m, "="); !ok || h == "" || a == "" {
			return fmt.Errorf("--imds %q: want HOST=ADDR, e.g. node-0=127.0.0.1:18080", m)
		}
	}
	return nil
}

func main() {
	o := &options{}
	fs := pflag.NewFlagSet("azure-emulator", pflag.ExitOnError)
	o.AddFlags(fs)
	kfs := flag.NewFlagSet("klog", flag.ExitOnError)
	klog.InitFlags(kfs)
	fs.AddGoFlagSet(kfs)
	_ = fs.Parse(os.Args[1:])
	if version.PrintIfRequested(o.version, "azure-emulator", os.Stdout) {
		return
	}
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "azure-emulator:", err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "azure-emulator:", err)
		os.Exit(1)
	}
}

func run(o *options) error {
	cfg, err := emulator.Load(o.config)
	if err != nil {
		return err
	}
	cfg.Logger = klog.NewKlogr()
	if o.armAddr != "" {
		cfg.ARMAddr = o.armAddr
	}
	if o.aadAddr != "" {
		cfg.AADAddr = o.aadAddr
	}
	if o.adminAddr != "" {
		cfg.AdminAddr = o.adminAddr
	}
	if o.fast {
		cfg.Timing = emulator.FastTiming()
	}
	if o.throttling && !cfg.Throttling.Enabled {
		cfg.Throttling = emulator.DefaultThrottling()
	}
	cfg.IssuerCAs = append(cfg.IssuerCAs, o.issuerCAs...)
	cfg.ARMAudiences = append(cfg.ARMAudiences, o.armAuds...)
	e, err := emulator.New(cfg)
	if err != nil {
		return err
	}
	if err := e.Start(); err != nil {
		return err
	}
	defer e.Close()
	ca := o.caFile
	if ca == "" {
		ca = filepath.Join(os.TempDir(), "azure-emulator-ca.pem")
	}
	if err := e.WriteCA(ca); err != nil {
		return err
	}
	fmt.Printf("ARM:   %s\nAAD:   %s\nadmin: %s\nCA:    %s\ntenant: %s  subscription: %s  resource group: %s\n",
		e.ARMURL(), e.AADURL(), e.AdminURL(), ca, e.Config().TenantID, e.Config().SubscriptionID, e.Config().ResourceGroup)
	named := map[string]bool{}
	for _, m := range o.imds {
		h, a, _ := strings.Cut(m, "=")
		u, err := e.StartIMDS(h, a)
		if err != nil {
			return err
		}
		named[u] = true
		fmt.Printf("IMDS:  %s  %s\n", u, h)
	}
	if o.imdsAll {
		for _, h := range e.Hosts() {
			u, err := e.StartIMDS(h, "")
			if err != nil {
				return err
			}
			if !named[u] {
				fmt.Printf("IMDS:  %s  %s\n", u, h)
			}
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return nil
}
