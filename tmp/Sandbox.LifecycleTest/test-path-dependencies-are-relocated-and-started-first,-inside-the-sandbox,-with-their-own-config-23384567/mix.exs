defmodule PdMain.MixProject do
  use Mix.Project
  def project, do: [app: :pd_main, version: "0.1.0", deps: [{:pd_dep, path: "libs/pd_dep"}]]
  def application, do: [mod: {PdMain.App, []}]
end
