import Config
config :pd_dep, label: "configured by main"
