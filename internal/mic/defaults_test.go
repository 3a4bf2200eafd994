package mic_test

import "github.com/podidentity/podidentity/internal/cloud"

func cloudDefaults(w *world) cloud.Defaults {
	return cloud.Defaults{SubscriptionID: w.sub, ResourceGroup: w.rg}
}
