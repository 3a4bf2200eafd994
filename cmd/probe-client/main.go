// Command probe-client is the sandbox's stand-in for a container image: it runs the container's
// command line as an Azure client would (see internal/probeclient) and exits with its code.
//
//	probe-client [flags] -- <command> [args...]
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/podidentity/podidentity/internal/probeclient"
	"github.com/podidentity/podidentity/internal/version"
)

func main() {
	var o probeclient.Options
	fs := pflag.NewFlagSet("probe-client", pflag.ContinueOnError)
	o.AddFlags(fs)
	showVersion := fs.Bool("version", false, "print the version, commit and build date, then exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if version.PrintIfRequested(*showVersion, "probe-client", os.Stdout) {
		return
	}
	if err := o.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "probe-client:", err)
		os.Exit(2)
	}
	// SIGTERM is how the node agent stops a container: stop cleanly, exit 0 as an app would.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := probeclient.New(o, os.Stdout, os.Stderr, os.Getenv).Run(ctx, fs.Args())
	os.Exit(probeclient.ExitCode(err))
}
