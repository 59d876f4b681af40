defmodule PdDep.MixProject do
  use Mix.Project
  def project, do: [app: :pd_dep, version: "0.1.0"]
  def application, do: [mod: {PdDep.App, []}, env: [label: "default"]]
end
