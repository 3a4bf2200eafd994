// Command mic is the Managed Identity Controller. Every aad-pod-identity v1.8 MIC flag is
// accepted; see docs/mic.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/azureconfig"
	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/cloud/armcloud"
	"github.com/podidentity/podidentity/internal/kubescheme"
	"github.com/podidentity/podidentity/internal/logging"
	"github.com/podidentity/podidentity/internal/mic"
	"github.com/podidentity/podidentity/internal/version"
)

// options are the command-line flags that are not mic.Options.
type options struct {
	mic                     mic.Options
	kubeconfig, cloudconfig string
	version                 bool
	leaderInstance          string
	leaderNamespace         string
	leaderName              string
	leaderDuration          time.Duration
	probePort, metricsPort  int
	bindHost                string
	enableProfile           bool
	enableScaleFeatures     bool
	clientQPS               float64
	clientBurst             int
	immutable               string
	configMapName           string
	typeUpgradeKey          string
	enableTypeUpgrade       bool
	updateMaxRetry          int
	updateRetryInterval     time.Duration
	pollInterval            time.Duration
	cleanup                 bool
	logFormat               string
	customUserAgent         string
}

// AddFlags registers every upstream MIC flag plus podidentity's own; those of mic.Options take
// their defaults from mic.DefaultOptions.
func (o *options) AddFlags(fs *pflag.FlagSet) {
	o.mic = mic.DefaultOptions()
	o.mic.AddFlags(fs)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig; in-cluster config when empty.")
	fs.StringVar(&o.cloudconfig, "cloudconfig", "", "Path to azure.json; environment variables are used when empty. Reloaded when it changes.")
	fs.BoolVar(&o.version, "version", false, "Print the version and exit.")
	fs.StringVar(&o.leaderInstance, "leader-election-instance", "", "Lock holder name (default: host name); informational, controller-runtime adds a unique suffix.")
	fs.StringVar(&o.leaderNamespace, "leader-election-namespace", "default", "Namespace of the leader Lease.")
	fs.StringVar(&o.leaderName, "leader-election-name", "aad-pod-identity-mic", "Name of the leader Lease.")
	fs.DurationVar(&o.leaderDuration, "leader-election-duration", 15*time.Second, "Lease duration; renew deadline is half, retry period a quarter.")
	fs.IntVar(&o.probePort, "http-probe-port", 8080, "Port of /healthz and /readyz.")
	fs.IntVar(&o.metricsPort, "prometheus-port", 8888, "Port of /metrics.")
	fs.StringVar(&o.bindHost, "bind-host", "", "Address the probe and metrics servers listen on (default all interfaces).")
	fs.BoolVar(&o.enableProfile, "enableProfile", false, "Deprecated, ignored.")
	fs.BoolVar(&o.enableScaleFeatures, "enableScaleFeatures", false, "Deprecated no-op (as upstream).")
	fs.Float64Var(&o.clientQPS, "clientQps", 200, "Kubernetes client QPS (upstream: 5).")
	fs.IntVar(&o.clientBurst, "clientBurst", 400, "Kubernetes client burst (upstream: equal to QPS).")
	fs.StringVar(&o.immutable, "immutable-user-msis", "", "Comma-separated client IDs MIC never removes from a VM/VMSS.")
	fs.StringVar(&o.configMapName, "config-map-name", "aad-pod-identity-config", "Deprecated, ignored (type upgrade not needed).")
	fs.StringVar(&o.typeUpgradeKey, "type-upgrade-status-key", "type-upgrade-status", "Deprecated, ignored.")
	fs.BoolVar(&o.enableTypeUpgrade, "enable-type-upgrade", true, "Deprecated, ignored: objects from aad-pod-identity < 1.6 must be re-applied.")
	fs.IntVar(&o.updateMaxRetry, "update-user-msi-max-retry", 2, "Deprecated: refused identities are dropped and the rest retried at once, always.")
	fs.DurationVar(&o.updateRetryInterval, "update-user-msi-retry-interval", time.Second, "Deprecated, ignored.")
	fs.DurationVar(&o.pollInterval, "arm-poll-interval", time.Second, "Poll interval of ARM long-running operations without Retry-After.")
	fs.BoolVar(&o.cleanup, "cleanup", false, "Remove MIC's finalizer from every AzureAssignedIdentity, delete them, and exit (uninstall / stuck namespace).")
	fs.StringVar(&o.logFormat, "log-format", "text", "Log format: text (klog) or json (one object per line).")
	fs.StringVar(&o.customUserAgent, "custom-user-agent", "", "Appended to the user agent of ARM calls.")
}

func (o *options) validate() error {
	if o.clientQPS <= 0 || o.clientBurst <= 0 {
		return fmt.Errorf("--clientQps (%v) and --clientBurst (%d) must be positive", o.clientQPS, o.clientBurst)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return fmt.Errorf("--log-format %q: use text or json", o.logFormat)
	}
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mic:", err)
		os.Exit(1)
	}
}

// normalizeArgs lets single-dash long flags work, as with upstream's Go flag package.
func normalizeArgs(args []string) []string {
	out := make([]string, 0, len(args))
	for _, a := range args {
		if strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--") && len(a) > 2 {
			a = "-" + a
		}
		out = append(out, a)
	}
	return out
}

// run is MIC's whole command: flags from args, environment from getenv, --version and --help
// output to stdout; it returns when ctx ends.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	var o options
	fs := pflag.NewFlagSet("mic", pflag.ContinueOnError)
	fs.SetOutput(stdout)
	o.AddFlags(fs)
	kfs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(kfs)
	fs.AddGoFlagSet(kfs)
	if err := fs.Parse(normalizeArgs(args)); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if version.PrintIfRequested(o.version, "mic", stdout) {
		return nil
	}
	if err := o.validate(); err != nil {
		return err
	}
	if err := logging.Setup(o.logFormat, logging.Verbosity(kfs), os.Stderr); err != nil {
		return err
	}
	log := klog.NewKlogr()
	for _, name := range []string{"enableProfile", "enableScaleFeatures", "config-map-name", "type-upgrade-status-key", "enable-type-upgrade",
		"update-user-msi-max-retry", "update-user-msi-retry-interval"} {
		if fs.Changed(name) {
			log.Info("flag is deprecated and has no effect", "flag", "--"+name)
		}
	}
	restCfg, err := restConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	restCfg.QPS, restCfg.Burst = float32(o.clientQPS), o.clientBurst
	restCfg.UserAgent = version.UserAgent("mic", o.customUserAgent)

	if o.cleanup {
		c, err := client.New(restCfg, client.Options{Scheme: kubescheme.New()})
		if err != nil {
			return fmt.Errorf("creating the Kubernetes client: %w", err)
		}
		n, err := mic.Cleanup(ctx, c, log)
		log.Info("cleanup finished", "released", n)
		return err
	}

	mo := o.mic
	mo.Namespace = getenv("MIC_POD_NAMESPACE")
	if mo.Namespace == "" {
		return errors.New("MIC_POD_NAMESPACE is not set: set it to MIC's namespace (the downward API field metadata.namespace)")
	}
	mo.ForceNamespaced = mo.ForceNamespaced || strings.EqualFold(getenv(aadv1.ForceNamespacedEnv), "true")
	if err := mo.Validate(); err != nil {
		return err
	}
	settings, err := azureconfig.Load(o.cloudconfig, getenv)
	if err != nil {
		return err
	}
	m := mic.NewMetrics(crmetrics.Registry)
	// Go runtime and process metrics (memory, CPU, file descriptors), as every controller has.
	for _, col := range []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := crmetrics.Registry.Register(col); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return fmt.Errorf("registering runtime metrics: %w", err)
		}
	}
	build := func(s *azureconfig.Settings) (cloud.Compute, error) {
		return armcloud.New(s, armcloud.Options{PollInterval: o.pollInterval, UserAgent: version.UserAgent("mic", o.customUserAgent), Observe: m.ObserveARM})
	}
	c0, err := build(settings)
	if err != nil {
		return err
	}
	compute := armcloud.NewReloading(c0)
	go azureconfig.Watch(ctx, log, settings.Files, settings.Fingerprint, 10*time.Second, func() {
		s, err := azureconfig.Load(o.cloudconfig, getenv)
		if err != nil {
			log.Error(err, "reloading the Azure configuration failed; keeping the previous one")
			return
		}
		if c, err := build(s); err == nil {
			compute.Swap(c)
		} else {
			log.Error(err, "rebuilding ARM clients failed; keeping the previous ones")
		}
	})
	mo.ImmutableClientIDs = splitList(o.immutable)
	if settings.Config.UserAssignedIdentityID != "" {
		mo.ImmutableClientIDs = append(mo.ImmutableClientIDs, settings.Config.UserAssignedIdentityID)
	}
	mo.Defaults = cloud.Defaults{SubscriptionID: settings.Config.SubscriptionID, ResourceGroup: settings.Config.ResourceGroup}
	addr := func(p int) string {
		if p == 0 {
			return "0"
		}
		return net.JoinHostPort(o.bindHost, strconv.Itoa(p))
	}
	return mic.Run(ctx, mic.RunConfig{
		Rest: restCfg, Compute: compute, Log: log, Metrics: m,
		Options:        mo,
		LeaderElection: true, LeaseName: o.leaderName, LeaseNamespace: o.leaderNamespace, LeaseDuration: o.leaderDuration,
		ProbeAddr: addr(o.probePort), MetricsAddr: addr(o.metricsPort), GracefulShutdown: 10 * time.Second,
	})
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("reading --kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("no --kubeconfig and not running in a cluster: %w", err)
	}
	return c, nil
}
