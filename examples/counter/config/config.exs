import Config

config :counter, step: 1, greeting: "hello from counter"
